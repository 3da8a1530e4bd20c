"""The raw primitives of envelope v1, and nothing else.

One fixed suite per major version, no negotiation:

- signatures: Ed25519 over a domain-separation prefix ‖ exact bytes;
- key wrap: HPKE base mode, DHKEM(X25519, HKDF-SHA256), HKDF-SHA256,
  ChaCha20-Poly1305 (RFC 9180), from ``cryptography``;
- payload: libsodium secretstream XChaCha20-Poly1305, from ``pynacl``;
- hashes: SHA-256.
"""

from __future__ import annotations

import hashlib

import nacl.bindings as sodium
import nacl.exceptions
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hpke
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey

from envelopes.errors import EnvelopeRefused, Reason

HEADER_CONTEXT = b"cipherpost envelope v1 header\x00"
SEGMENT_CONTEXT = b"cipherpost envelope v1 segment\x00"
WRAP_CONTEXT = b"cipherpost envelope v1 wrap\x00"
COMMIT_CONTEXT = b"cipherpost envelope v1 key commitment\x00"

PAYLOAD_KEY_BYTES = sodium.crypto_secretstream_xchacha20poly1305_KEYBYTES
STREAM_HEADER_BYTES = sodium.crypto_secretstream_xchacha20poly1305_HEADERBYTES
STREAM_ABYTES = sodium.crypto_secretstream_xchacha20poly1305_ABYTES
TAG_MESSAGE = sodium.crypto_secretstream_xchacha20poly1305_TAG_MESSAGE
TAG_FINAL = sodium.crypto_secretstream_xchacha20poly1305_TAG_FINAL
SIGNATURE_BYTES = 64
WRAPPED_KEY_BYTES = 32 + PAYLOAD_KEY_BYTES + 16  # HPKE enc ‖ ciphertext ‖ tag

_SUITE = hpke.Suite(hpke.KEM.X25519, hpke.KDF.HKDF_SHA256, hpke.AEAD.CHACHA20_POLY1305)


def sha256(data: bytes) -> bytes:
    """SHA-256 digest."""
    return hashlib.sha256(data).digest()


def sign(key: Ed25519PrivateKey, context: bytes, message: bytes) -> bytes:
    """Ed25519 signature over ``context ‖ message``."""
    return key.sign(context + message)


def verify_signature(public: bytes, signature: bytes, context: bytes, message: bytes) -> bool:
    """True only if ``signature`` is a valid Ed25519 signature over ``context ‖ message``.

    Verified by libsodium: about twice as fast as OpenSSL here, and strict (it
    refuses non-canonical signatures and small-order public keys).
    """
    if len(public) != 32 or len(signature) != SIGNATURE_BYTES:
        return False
    try:
        sodium.crypto_sign_open(signature + context + message, public)
    except (nacl.exceptions.BadSignatureError, nacl.exceptions.CryptoError, ValueError, TypeError):
        return False
    return True


def new_payload_key() -> bytes:
    """A fresh random secretstream key."""
    return bytes(sodium.crypto_secretstream_xchacha20poly1305_keygen())


def key_commitment(envelope_id: bytes, payload_key: bytes) -> bytes:
    """Commits the header to one payload key, so every recipient decrypts the same bytes."""
    return sha256(COMMIT_CONTEXT + envelope_id + payload_key)


def wrap_info(envelope_id: bytes, sender_kid: bytes, recipient_kid: bytes, code: str) -> bytes:
    """HPKE ``info``: binds the wrapped key to this envelope, sender and recipient."""
    return WRAP_CONTEXT + envelope_id + sender_kid + recipient_kid + code.encode("ascii")


def wrap_key(payload_key: bytes, recipient_public: bytes, info: bytes) -> bytes:
    """HPKE-seal the payload key to one recipient's X25519 key."""
    return _SUITE.encrypt(payload_key, X25519PublicKey.from_public_bytes(recipient_public), info)


def unwrap_key(wrapped: bytes, private: X25519PrivateKey, info: bytes) -> bytes:
    """HPKE-open a wrapped payload key; :class:`EnvelopeRefused` if it was not for us."""
    try:
        return _SUITE.decrypt(wrapped, private, info)
    except (InvalidTag, ValueError) as e:
        raise EnvelopeRefused(
            Reason.DECRYPT, "payload key does not open with this agency's key"
        ) from e


class StreamEncryptor:
    """secretstream push with the header hash as associated data on every chunk."""

    def __init__(self, key: bytes, associated_data: bytes | None = None) -> None:
        self._state = sodium.crypto_secretstream_xchacha20poly1305_state()
        self.header = bytes(
            sodium.crypto_secretstream_xchacha20poly1305_init_push(self._state, key)
        )
        self.associated_data = associated_data

    def push(self, chunk: bytes, final: bool) -> bytes:
        """Encrypt one chunk; ``final`` marks the end of the stream."""
        tag = TAG_FINAL if final else TAG_MESSAGE
        return bytes(
            sodium.crypto_secretstream_xchacha20poly1305_push(
                self._state, chunk, self.associated_data, tag
            )
        )


class StreamDecryptor:
    """secretstream pull; fails on any forged, reordered or wrongly-final chunk."""

    def __init__(self, key: bytes, header: bytes, associated_data: bytes) -> None:
        self._state = sodium.crypto_secretstream_xchacha20poly1305_state()
        try:
            sodium.crypto_secretstream_xchacha20poly1305_init_pull(self._state, header, key)
        except (nacl.exceptions.CryptoError, ValueError, TypeError) as e:
            raise EnvelopeRefused(Reason.DECRYPT, "payload stream header is not valid") from e
        self._ad = associated_data

    def pull(self, chunk: bytes, final: bool) -> bytes:
        """Decrypt and authenticate one chunk; check the FINAL tag is where it must be."""
        try:
            plaintext, tag = sodium.crypto_secretstream_xchacha20poly1305_pull(
                self._state, chunk, self._ad
            )
        except (nacl.exceptions.CryptoError, ValueError, TypeError) as e:
            raise EnvelopeRefused(Reason.DECRYPT, "payload segment does not decrypt") from e
        if (tag == TAG_FINAL) != final:
            raise EnvelopeRefused(Reason.DECRYPT, "payload stream ends in the wrong place")
        return bytes(plaintext)
