"""The agency desktop agent, its Python API for integrators, and the cipherpost CLI.

Integrators (document-management software) use::

    from agents import open_agent, edxml_fields

    with open_agent("/srv/cipherpost/agent.toml") as agent:
        eid = agent.send(path, to=[AgencyCode.parse("000.00.00.H41")], level=Level.MAT,
                         subject="...", fields=edxml_fields(notation="12/UBND-VP"))
        for doc in agent.documents():          # verified, decrypted, receipted
            ...                                # doc.path, doc.metadata["fields"]
        agent.reply_status(eid, "03")          # accepted
        agent.status(eid)                      # receipts, statuses, audit proof

See docs/sdk.md.
"""

from __future__ import annotations

from pathlib import Path

from agents.client import Client, ReceivedDocument
from agents.config import AgentConfig
from agents.edxml import EDXML_FIELDS, STATUS_EDXML, edxml_fields
from envelopes.signatures import OfficialSignature, sign_document
from keys.ca import load_ca_certificate
from keys.keystore import unlock
from keys.officials import OfficialKeys, load_official

__all__ = [
    "EDXML_FIELDS",
    "STATUS_EDXML",
    "AgentConfig",
    "Client",
    "OfficialKeys",
    "OfficialSignature",
    "ReceivedDocument",
    "edxml_fields",
    "open_agent",
    "open_official",
    "sign_document",
]


def open_agent(config: str | Path, passphrase: bytes | None = None) -> Client:
    """The agent of the agency configured in ``config`` (passphrase: argument, else
    ``CIPHERPOST_PASSPHRASE``, else a prompt). Use it as a context manager."""
    settings = AgentConfig.load(Path(config))
    if passphrase is not None:
        return Client(settings, passphrase)
    return unlock(
        lambda prompted: Client(settings, prompted),
        prompt=f"Passphrase for {settings.agency_dir}: ",
    )


def open_official(
    official_dir: str | Path, ca_cert: str | Path, passphrase: bytes | None = None
) -> OfficialKeys:
    """An official's signing key (``cipherpost official enroll``) with the certificate the CA
    issued for it, checked against ``ca_cert``; for :func:`sign_document`."""
    ca = load_ca_certificate(Path(ca_cert))
    folder = Path(official_dir)
    if passphrase is not None:
        return load_official(folder, passphrase, ca)
    return unlock(
        lambda prompted: load_official(folder, prompted, ca),
        prompt=f"Passphrase for {folder}: ",
    )
