"""GATEWAY.toml: where the gateway finds its keys, directory, policy, store and broker.

A commented example is ``docs/examples/GATEWAY.toml`` (``cipherpost gateway
init`` writes one). Relative paths are relative to the config file; an
unknown key is refused, naming it.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from keys.errors import CipherpostError
from keys.tomlfile import load_toml

SCHEMA = {
    "gateway_id": None,
    "agency_dir": None,
    "directory": None,
    "ca_cert": None,
    "policy": None,
    "audit_db": None,
    "state_dir": None,
    "audit_dir": None,
    "audit": {"checkpoint_every": None, "checkpoint_seconds": None},
    "broker": {"credentials": None, "login_prefix": None, "prefetch": None},
    "metrics": {"listen": None},
    "flood": {"admin_url": None, "admin_password_file": None, "suspend_after": None},
    "log": {"level": None, "format": None},
}
LOG_LEVELS = ("debug", "info", "warning", "error")
LOG_FORMATS = ("json", "console")


@dataclass(frozen=True)
class GatewayConfig:
    gateway_id: str
    agency_dir: Path
    directory: Path
    ca_cert: Path
    policy: Path
    audit_db: Path
    state_dir: Path
    broker_credentials: Path
    audit_dir: Path | None = None  # default: agency_dir
    login_prefix: str = ""
    prefetch: int = 64
    checkpoint_every: int = 1000
    checkpoint_seconds: float = 10.0
    metrics_listen: str | None = None  # "127.0.0.1:9464": /metrics, /healthz, /readyz
    log_level: str = "info"
    log_format: str = "json"
    flood_admin_url: str | None = None  # management API user (administrator) of the flood guard
    flood_admin_password_file: Path | None = None
    suspend_after: int = 32  # junk messages from one login within a tally (<= 1 s)

    @property
    def audit_keys(self) -> Path:
        """The folder with this gateway's audit key and certificate."""
        return self.audit_dir or self.agency_dir

    @property
    def metrics_address(self) -> tuple[str, int] | None:
        """``(host, port)`` of the metrics and health listener, if one is configured."""
        if not self.metrics_listen:
            return None
        host, _, port = self.metrics_listen.rpartition(":")
        return host.strip("[]") or "127.0.0.1", int(port)

    @classmethod
    def load(cls, path: Path) -> GatewayConfig:
        """Read and check a GATEWAY.toml."""
        doc = load_toml(path, "gateway config", SCHEMA)
        base = path.parent
        broker = doc.get("broker", {})
        audit = doc.get("audit", {})
        log = doc.get("log", {})
        flood = doc.get("flood", {})
        try:
            config = cls(
                gateway_id=str(doc["gateway_id"]),
                agency_dir=base / doc["agency_dir"],
                directory=base / doc["directory"],
                ca_cert=base / doc["ca_cert"],
                policy=base / doc["policy"],
                audit_db=base / doc["audit_db"],
                state_dir=base / doc.get("state_dir", "gateway-state"),
                broker_credentials=base / broker["credentials"],
                login_prefix=str(broker.get("login_prefix", "")),
                prefetch=int(broker.get("prefetch", 64)),
                audit_dir=base / doc["audit_dir"] if "audit_dir" in doc else None,
                checkpoint_every=int(audit.get("checkpoint_every", 1000)),
                checkpoint_seconds=float(audit.get("checkpoint_seconds", 10.0)),
                metrics_listen=doc.get("metrics", {}).get("listen"),
                log_level=str(log.get("level", "info")),
                log_format=str(log.get("format", "json")),
                flood_admin_url=flood.get("admin_url"),
                flood_admin_password_file=(
                    base / flood["admin_password_file"] if "admin_password_file" in flood else None
                ),
                suspend_after=int(flood.get("suspend_after", 32)),
            )
        except KeyError as e:
            raise CipherpostError(f"{path}: missing setting {e}") from e
        except (TypeError, ValueError) as e:
            raise CipherpostError(f"{path}: invalid setting: {e}") from e
        if config.checkpoint_every < 1 or config.checkpoint_seconds <= 0:
            raise CipherpostError(f"{path}: [audit] checkpoint_every and _seconds must be > 0")
        if not 1 <= config.prefetch <= 10_000:
            raise CipherpostError(f"{path}: [broker] prefetch must be 1..10000")
        if not 1 <= config.suspend_after <= max(1, config.prefetch // 2):
            # The gateway holds a flooding lane's junk until its tally is written: it never
            # sees more than one prefetch window of it at once, and junk with and without
            # user_id is tallied apart (half a window each when a flooder alternates).
            raise CipherpostError(
                f"{path}: [flood] suspend_after must be 1..half the [broker] prefetch"
            )
        if config.log_level not in LOG_LEVELS or config.log_format not in LOG_FORMATS:
            raise CipherpostError(
                f"{path}: [log] level is one of {', '.join(LOG_LEVELS)}, format one of "
                f"{', '.join(LOG_FORMATS)}"
            )
        try:
            config.metrics_address  # noqa: B018 - parse it now, not at start-up
        except ValueError:
            raise CipherpostError(f"{path}: [metrics] listen must be HOST:PORT") from None
        return config


def example(gateway_id: str = "gw1", code: str = "000.00.99.G99") -> str:
    """A commented GATEWAY.toml (``cipherpost gateway init`` writes it; so is the docs' one)."""
    return f'''# GATEWAY.toml: one gateway instance. Paths are relative to this file.
# Unknown keys are refused (a typo never passes silently).

# This instance's audit log id: unique per instance, never reused (after a lost store, a new one).
gateway_id = "{gateway_id}"
agency_dir = "keys"             # the gateway's agency keys ({code}): signs rejection notices
audit_dir = "audit"             # its audit key (audit.key) and certificate from the CA (audit.crt)
directory = "directory.cpd"     # the signed directory (kept up to date from the broker)
ca_cert = "ca.crt"              # the cipher department's CA certificate (pinned)
policy = "policy.cpp"           # the signed classification policy (a newer one is picked up live)
audit_db = "audit.db"           # the audit store (SQLite, mode 0600); back it up: gateway backup
state_dir = "state"             # trust state, highest policy version, last checkpoint (0600)

[audit]
checkpoint_every = 1000         # sign a checkpoint every N leaves ...
checkpoint_seconds = 10         # ... or T seconds after the last one, if anything is new

[broker]
credentials = "cp-gateway.broker.json"  # from `cipherpost broker provision` (mode 0600)
login_prefix = ""               # the prefix provisioning gave every login, if any
prefetch = 64                   # per submit lane: messages in flight (memory: x part size)

[metrics]
listen = "127.0.0.1:9464"       # /metrics (Prometheus), /healthz, /readyz; remove to switch off

[log]
level = "info"                  # debug | info | warning | error
format = "json"                 # json (one object per line) | console

# The flood guard (docs/policy.md, "The flood guard"): a login whose junk (messages failing
# before any signature is verified) fills suspend_after within a second is suspended on the
# broker; `cipherpost broker reinstate LOGIN` lifts it. Needs a management user with the
# administrator tag; without admin_url the guard is off.
#[flood]
#admin_url = "http://cp-warden@127.0.0.1:15672"
#admin_password_file = "cp-warden.password"   # its password, mode 0600
#suspend_after = 32             # 1..prefetch/2
'''
