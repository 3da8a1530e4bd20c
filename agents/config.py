"""AGENT.toml: the desktop agent's settings; every agent command takes ``--config``.

```toml
agency_dir = "keys"              # from `cipherpost keys enroll`
directory = "directory.cpd"      # the signed directory from the cipher department
ca_cert = "ca.crt"               # the cipher department's CA certificate (pinned)
inbox = "inbox"                  # received documents and their .json sidecars
# state_db = "keys/agent.db"     # default: inside agency_dir
# auto_recall_unopened = false   # agree (15) at once to a recall of a document nobody
#                                # answered yet with a status (02-06); default: the clerk decides

[broker]
credentials = "000.01.12.H41.broker.json"   # from provisioning, mode 0600
```

Relative paths are relative to the config file; an unknown key is refused,
naming it. A commented example is ``docs/examples/AGENT.toml``.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from keys.errors import CipherpostError
from keys.tomlfile import load_toml

SCHEMA = {
    "agency_dir": None,
    "directory": None,
    "ca_cert": None,
    "inbox": None,
    "state_db": None,
    "auto_recall_unopened": None,
    "broker": {"credentials": None},
}


@dataclass(frozen=True)
class AgentConfig:
    agency_dir: Path
    directory: Path
    ca_cert: Path
    inbox: Path
    state_db: Path
    broker_credentials: Path
    auto_recall_unopened: bool = False

    @classmethod
    def load(cls, path: Path) -> AgentConfig:
        """Read and check an AGENT.toml."""
        doc = load_toml(path, "agent config", SCHEMA)
        base = path.parent
        auto = doc.get("auto_recall_unopened", False)
        if not isinstance(auto, bool):
            raise CipherpostError(f"{path}: auto_recall_unopened must be true or false")
        try:
            agency_dir = base / doc["agency_dir"]
            return cls(
                agency_dir=agency_dir,
                directory=base / doc["directory"],
                ca_cert=base / doc["ca_cert"],
                inbox=base / doc["inbox"],
                state_db=base / doc["state_db"] if "state_db" in doc else agency_dir / "agent.db",
                broker_credentials=base / doc["broker"]["credentials"],
                auto_recall_unopened=auto,
            )
        except (KeyError, TypeError) as e:
            raise CipherpostError(f"{path}: missing setting {e}") from e

    def to_toml(self) -> str:
        """The config as TOML (absolute paths), for tools that write one."""
        return (
            f'agency_dir = "{self.agency_dir}"\ndirectory = "{self.directory}"\n'
            f'ca_cert = "{self.ca_cert}"\ninbox = "{self.inbox}"\nstate_db = "{self.state_db}"\n\n'
            f"auto_recall_unopened = {str(self.auto_recall_unopened).lower()}\n\n"
            f'[broker]\ncredentials = "{self.broker_credentials}"\n'
        )
