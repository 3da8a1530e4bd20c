"""GATEWAY.toml: where the gateway finds its keys, directory, policy, store and broker.

```toml
gateway_id = "gw1"
agency_dir = "gateway-keys"     # the gateway's own agency keys (signs rejection notices)
directory = "directory.cpd"
ca_cert = "ca/ca.crt"
policy = "policy.cpp"
audit_db = "audit.db"
state_dir = "gateway-state"     # trust state, last checkpoint (rollback protection)
audit_dir = "gw1-audit"         # this gateway's audit key (audit.key) and its certificate
                                # from the CA (audit.crt); default: agency_dir

[audit]
checkpoint_every = 1000         # sign a checkpoint every N leaves ...
checkpoint_seconds = 10         # ... or T seconds after the last one, if anything is new

[broker]
credentials = "cp-gateway.broker.json"   # written by `cipherpost broker provision`
login_prefix = ""                        # the same prefix provisioning used
prefetch = 64
```

Relative paths are relative to the config file.
"""

from __future__ import annotations

import tomllib
from dataclasses import dataclass
from pathlib import Path

from keys.errors import CipherpostError


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

    @property
    def audit_keys(self) -> Path:
        """The folder with this gateway's audit key and certificate."""
        return self.audit_dir or self.agency_dir

    @classmethod
    def load(cls, path: Path) -> GatewayConfig:
        """Read and check a GATEWAY.toml."""
        try:
            doc = tomllib.loads(path.read_text())
        except OSError as e:
            raise CipherpostError(f"cannot read gateway config {path}: {e.strerror}") from e
        except tomllib.TOMLDecodeError as e:
            raise CipherpostError(f"{path}: not valid TOML: {e}") from e
        base = path.parent
        broker = doc.get("broker", {})
        audit = doc.get("audit", {})
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
            )
        except (KeyError, TypeError, ValueError) as e:
            raise CipherpostError(f"{path}: missing or invalid setting {e}") from e
        if config.checkpoint_every < 1 or config.checkpoint_seconds <= 0:
            raise CipherpostError(f"{path}: [audit] checkpoint_every and _seconds must be > 0")
        return config
