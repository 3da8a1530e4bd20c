"""A small client for the RabbitMQ management HTTP API (provisioning only).

Uses the standard library's HTTP client: the calls are few and simple.
Credentials never appear in errors or logs.
"""

from __future__ import annotations

import base64
import json
import os
import socket
import ssl
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from keys.errors import CipherpostError, UsageError

TIMEOUT_S = 15.0
ADMIN_PASSWORD_ENV = "CIPHERPOST_ADMIN_PASSWORD"  # noqa: S105 - a variable name


ATTEMPTS = 3


class _Timeout(Exception):
    """The management API did not answer in time (retried)."""


class ManagementError(CipherpostError):
    """The management API refused or could not be reached."""


@dataclass(frozen=True)
class Management:
    """``base_url`` like ``http://127.0.0.1:15672``; admin credentials separately."""

    base_url: str
    username: str
    password: str = field(repr=False)
    cafile: Path | None = None  # for https: the CA that issued the nodes' certificates

    def with_ca(self, cafile: Path) -> Management:
        """The same API over https, trusting ``cafile`` for the node's certificate."""
        return Management(self.base_url, self.username, self.password, cafile)

    @classmethod
    def from_url(cls, url: str) -> Management:
        """Parse ``http://user:pass@host:15672`` (credentials may also be absent: guest)."""
        parts = urllib.parse.urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ManagementError("--admin-url must look like http://USER:PASS@127.0.0.1:15672")
        port = f":{parts.port}" if parts.port else ""
        return cls(
            base_url=f"{parts.scheme}://{parts.hostname}{port}",
            username=urllib.parse.unquote(parts.username or "guest"),
            password=urllib.parse.unquote(parts.password or "guest"),
        )

    @classmethod
    def for_operator(
        cls, url: str, password_file: Path | None = None, env: Mapping[str, str] | None = None
    ) -> Management:
        """The admin's connection for a command: the URL names host and user, never the password.

        The password comes from ``CIPHERPOST_ADMIN_PASSWORD`` or a file (mode 0600):
        a command line is visible to every local user (``ps``).
        """
        parts = urllib.parse.urlsplit(url)
        if parts.password:
            raise UsageError(
                "the admin password must not be on the command line (ps shows it): give "
                f"--admin-url {parts.scheme}://{parts.username or 'USER'}@{parts.hostname}"
                f"{':' + str(parts.port) if parts.port else ''} and set {ADMIN_PASSWORD_ENV}"
                " or --admin-password-file"
            )
        environ = os.environ if env is None else env
        if password_file is not None:
            try:
                if password_file.stat().st_mode & 0o077:
                    raise UsageError(f"{password_file} must not be readable by others (chmod 600)")
                lines = password_file.read_text(encoding="utf-8").splitlines()
            except OSError as e:
                raise ManagementError(f"cannot read {password_file}: {e.strerror}") from e
            password = lines[0] if lines else ""
        else:
            password = environ.get(ADMIN_PASSWORD_ENV, "")
        if not password:
            raise UsageError(
                f"no admin password: set {ADMIN_PASSWORD_ENV} or give --admin-password-file"
            )
        base = cls.from_url(url)
        return cls(base.base_url, urllib.parse.unquote(parts.username or "guest"), password)

    def _request(self, method: str, path: str, body: object | None = None) -> Any:
        """One call; a timeout (a node busy declaring many queues) is retried with backoff:
        every call provisioning makes is idempotent."""
        for attempt in range(1, ATTEMPTS + 1):
            try:
                return self._request_once(method, path, body)
            except _Timeout as e:
                if attempt == ATTEMPTS:
                    raise ManagementError(
                        f"RabbitMQ management API at {self.base_url} did not answer {method} "
                        f"{path} within {TIMEOUT_S:.0f} s, {ATTEMPTS} times"
                    ) from e
                time.sleep(2.0 * attempt)
        raise AssertionError("unreachable")

    def _request_once(self, method: str, path: str, body: object | None) -> Any:
        data = None if body is None else json.dumps(body).encode()
        req = urllib.request.Request(  # noqa: S310 - the URL scheme is checked in from_url
            self.base_url + path, data=data, method=method
        )
        token = base64.b64encode(f"{self.username}:{self.password}".encode()).decode()
        req.add_header("Authorization", f"Basic {token}")
        req.add_header("Content-Type", "application/json")
        try:
            context = None
            if self.base_url.startswith("https:"):
                context = ssl.create_default_context(
                    cafile=str(self.cafile) if self.cafile else None
                )
            with urllib.request.urlopen(req, timeout=TIMEOUT_S, context=context) as resp:  # noqa: S310
                raw = resp.read()
        except urllib.error.HTTPError as e:
            if e.code == 404 and method == "GET":
                return None
            detail = e.read().decode(errors="replace")[:200]
            raise ManagementError(
                f"management API {method} {path}: HTTP {e.code} {detail}"
            ) from None
        except TimeoutError as e:
            raise _Timeout() from e
        except urllib.error.URLError as e:
            if isinstance(e.reason, TimeoutError | socket.timeout):
                raise _Timeout() from e
            raise ManagementError(
                f"RabbitMQ management API not reachable at {self.base_url} ({e}); "
                "enable it with: rabbitmq-plugins enable rabbitmq_management"
            ) from None
        except OSError as e:
            raise ManagementError(
                f"RabbitMQ management API not reachable at {self.base_url} ({e}); "
                "enable it with: rabbitmq-plugins enable rabbitmq_management"
            ) from None
        return json.loads(raw) if raw else None

    @staticmethod
    def q(name: str) -> str:
        """URL-quote a path segment (vhost "/" becomes %2F)."""
        return urllib.parse.quote(name, safe="")

    def get(self, path: str) -> Any:
        return self._request("GET", path)

    def put(self, path: str, body: object) -> None:
        self._request("PUT", path, body)

    def post(self, path: str, body: object) -> None:
        self._request("POST", path, body)

    def delete(self, path: str) -> None:
        try:
            self._request("DELETE", path)
        except ManagementError as e:
            if "HTTP 404" not in str(e):
                raise
