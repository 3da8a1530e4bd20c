"""systemd's readiness protocol (``Type=notify``): a few lines of sd_notify, no library.

A datagram such as ``READY=1`` to the unix socket named by ``$NOTIFY_SOCKET``
(a leading ``@`` means the abstract namespace). Without the variable (not run
by systemd) nothing happens.
"""

from __future__ import annotations

import os
import socket


def sd_notify(state: str) -> bool:
    """Tell systemd ``state`` (``READY=1``, ``STOPPING=1``, ``STATUS=…``); False if not asked."""
    address = os.environ.get("NOTIFY_SOCKET")
    if not address:
        return False
    if address.startswith("@"):
        address = "\0" + address[1:]
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.connect(address)
        sock.sendall(state.encode())
    return True
