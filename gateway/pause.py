"""Deciding only on a policy and a directory in force: when either expires the gateway gives
back what it receives and takes no more until a newer version is installed; it warns days
before, and picks up a newer signed policy file while running."""

from __future__ import annotations

import datetime as dt

from cryptography import x509

from gateway.base import GatewayBase
from gateway.config import GatewayConfig
from gateway.policy import Policy, PolicyTrust
from keys.certs import AgencyCertificate
from keys.errors import CipherpostError
from keys.logsetup import get_logger

log = get_logger("cipherpost.gateway")

POLICY_FILE_CHECK = dt.timedelta(seconds=5)  # a running gateway looks for a newer policy file
PAUSED_REMINDER = dt.timedelta(seconds=60)
EXPIRY_WARNING = dt.timedelta(days=3)  # as the Prometheus alert: log it too, once a day
EXPIRY_REMINDER = dt.timedelta(days=1)


def read_policy(config: GatewayConfig, ca_cert: x509.Certificate, now: dt.datetime) -> Policy:
    try:
        data = config.policy.read_bytes()
    except OSError as e:
        raise CipherpostError(f"cannot read {e.filename}: {e.strerror}") from e
    return Policy.load_signed(data, ca_cert.public_key(), now)  # type: ignore[arg-type]


class Pause(GatewayBase):
    """The gateway's policy and directory in force (a part of :class:`gateway.service.Gateway`)."""

    ca_certificate: x509.Certificate
    audit_certificate: AgencyCertificate
    policy_trust: PolicyTrust
    _policy_checked: dt.datetime
    _policy_problem: str
    # Messages given back to their queue while no policy or directory was in force.
    _returned_in_pause: int
    _paused_since: dt.datetime | None
    _paused_told: dt.datetime
    _expiry_told: dict[str, dt.datetime]

    def _in_force_metrics(self) -> None:
        self.metrics.in_force(
            directory=(self.directory.version, self.directory.expires_at),
            policy=(self.policy.version, self.policy.expires),
            audit_certificate=self.audit_certificate.not_after,
        )

    def _in_force(self, now: dt.datetime) -> bool:
        """Whether a decision may be made now: policy and directory both unexpired."""
        if self.policy.expired(now):
            why = f"policy version {self.policy.version} expired"
        elif now > self.directory.expires_at:
            why = f"directory version {self.directory.version} expired"
        else:
            self._warn_before_expiry(now)
            return True
        self.metrics.pause(True, self._returned_in_pause)
        if self._paused_since is None or (now - self._paused_told) >= PAUSED_REMINDER:
            self._paused_since = self._paused_since or now
            self._paused_told = now
            log.error(
                "gateway_paused",
                reason=why,
                returned_to_queue=self._returned_in_pause,
                since=self._paused_since.isoformat(),
                fix="install a newer signed policy file / publish a newer directory version",
            )
        return False

    def _warn_before_expiry(self, now: dt.datetime) -> None:
        """Days before decisions stop, say so (once a day per thing, while it lasts)."""
        for what, version, expires in (
            ("policy", self.policy.version, self.policy.expires),
            ("directory", self.directory.version, self.directory.expires_at),
        ):
            if expires is None or expires - now > EXPIRY_WARNING:
                continue
            key = f"{what}:{version}"
            told = self._expiry_told.get(key)
            if told is not None and now - told < EXPIRY_REMINDER:
                continue
            self._expiry_told[key] = now
            log.warning(
                "gateway_expires_soon",
                what=what,
                version=version,
                expires=expires.isoformat(),
                hours_left=round((expires - now).total_seconds() / 3600, 1),
                fix=f"sign and install a newer {what} before then: decisions stop when it expires",
            )

    def _resume(self, now: dt.datetime) -> None:
        """Pick up a newer policy file; decide what was held once everything is in force."""
        self._refresh_policy(now, paused=self._paused_since is not None)
        if self._paused_since is None or not self._in_force(now):
            return
        log.info(
            "gateway_resumed",
            returned_to_queue=self._returned_in_pause,
            policy_version=self.policy.version,
            directory_version=self.directory.version,
        )
        self._paused_since = None
        self._returned_in_pause = 0
        self.metrics.pause(False, 0)
        if self._consumer is not None:
            self._consumer.resume()  # what was given back is delivered again and decided

    def _refresh_policy(self, now: dt.datetime, *, paused: bool = False) -> None:
        """A newer signed policy file replaces the one in force (never an older one)."""
        if not paused and (now - self._policy_checked) < POLICY_FILE_CHECK:
            return
        self._policy_checked = now
        try:
            policy = read_policy(self.config, self.ca_certificate, now)
            if (policy.version, policy.digest, policy.expires) == (
                self.policy.version,
                self.policy.digest,
                self.policy.expires,
            ):
                return
            self.policy_trust.accept(policy)
        except CipherpostError as e:  # Refused included: rollback, bad signature, expired
            if str(e) != self._policy_problem:
                self._policy_problem = str(e)
                log.error("policy_refused", reason=str(e), kept_version=self.policy.version)
            return
        self._policy_problem = ""
        self.policy = policy
        self.counters["policy_updates"] += 1
        self._in_force_metrics()
        log.info(
            "policy_updated",
            policy=policy.name,
            version=policy.version,
            expires=policy.expires.isoformat() if policy.expires else None,
        )
