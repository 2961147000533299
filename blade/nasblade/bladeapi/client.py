"""Synchronous clients of the blade's two HTTP APIs (see ``nasblade.bladeapi.server``).

``BladeClient(url, token)`` talks to the management API over TCP (operator, CLI, tests),
including the cluster-group routes under ``/v1/cluster`` (``nasblade.cluster.api``) that the
management terminal (``nasblade.terminal.standalone``) uses;
``LocalClient(socket_path)`` talks to the local API over the pod-private Unix socket (the file
processor side of the blade). Both return decoded JSON and raise ``BladeAPIError`` with the
HTTP status and the server's message on any non-2xx reply.
"""

from __future__ import annotations

import http.client
import json
import socket
from typing import Any
from urllib.parse import quote, urlparse


class BladeAPIError(RuntimeError):
    def __init__(self, status: int, message: str) -> None:
        super().__init__(f"HTTP {status}: {message}")
        self.status = status
        self.message = message


class UnixHTTPConnection(http.client.HTTPConnection):
    """HTTP over a Unix socket (the local APIs: block processor, file processor, chassis)."""

    def __init__(self, path: str, *, timeout: float) -> None:
        super().__init__("localhost", timeout=timeout)
        self._path = path

    def connect(self) -> None:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(self.timeout)
        sock.connect(self._path)
        self.sock = sock


def _call(conn: http.client.HTTPConnection, method: str, path: str, *, body: Any = None, headers: dict[str, str]) -> Any:
    data = None if body is None else json.dumps(body).encode()
    hdrs = dict(headers)
    if data is not None:
        hdrs["Content-Type"] = "application/json"
    try:
        conn.request(method, path, body=data, headers=hdrs)
        resp = conn.getresponse()
        raw = resp.read()
    finally:
        conn.close()
    decoded: Any = json.loads(raw) if raw else None
    if not 200 <= resp.status < 300:
        msg = decoded.get("error", raw.decode()) if isinstance(decoded, dict) else raw.decode()
        raise BladeAPIError(resp.status, str(msg))
    return decoded


class BladeClient:
    """Client of the blade management API, e.g. ``BladeClient("http://127.0.0.1:9100", token)``."""

    def __init__(self, url: str, token: str, *, timeout: float = 30.0) -> None:
        parsed = urlparse(url)
        self.host = parsed.hostname or "127.0.0.1"
        self.port = parsed.port or 80
        self.token = token
        self.timeout = timeout

    def _req(self, method: str, path: str, body: Any = None) -> Any:
        conn = http.client.HTTPConnection(self.host, self.port, timeout=self.timeout)
        return _call(conn, method, path, body=body, headers={"Authorization": f"Bearer {self.token}"})

    def status(self) -> dict[str, Any]:
        result: dict[str, Any] = self._req("GET", "/v1/status")
        return result

    def slots(self) -> dict[str, Any]:
        result: dict[str, Any] = self._req("GET", "/v1/slots")
        return result

    def take_over_lu(self, lu: str) -> dict[str, Any]:
        result: dict[str, Any] = self._req("POST", f"/v1/lus/{lu}/takeover")
        return result

    def release_lu(self, lu: str) -> dict[str, Any]:
        result: dict[str, Any] = self._req("POST", f"/v1/lus/{lu}/release")
        return result

    # -- the cluster-group routes (``nasblade.cluster.api``) -----------------------------------

    def _cluster(self, method: str, path: str = "", body: Any = None) -> dict[str, Any]:
        result: dict[str, Any] = self._req(method, "/v1/cluster" + path, body)
        return result

    def cluster(self) -> dict[str, Any]:
        """The group as this blade sees it: members, ownership, active area, takeovers, backups."""
        return self._cluster("GET")

    def check_takeover(self) -> dict[str, Any]:
        """Per file system: could this blade take it over now, and why not."""
        return self._cluster("GET", "/check-takeover")

    def take_over_fs(self, fs: str, *, force: bool = False) -> dict[str, Any]:
        """Take ``fs`` over (a live owner is asked to release first unless ``force`` fences it)."""
        return self._cluster("POST", f"/filesystems/{quote(fs, safe='')}/takeover", {"force": force})

    def release_fs(self, fs: str) -> dict[str, Any]:
        return self._cluster("POST", f"/filesystems/{quote(fs, safe='')}/release")

    def give_back(self) -> dict[str, Any]:
        """Take back every file system whose home is this blade."""
        return self._cluster("POST", "/giveback")

    def backup(self, *, cross_group: list[str] | bool = False, rate_limit: int = 0) -> dict[str, Any]:
        """Back the group's portion (and ``cross_group``'s: a list of groups, or every one) up now."""
        return self._cluster("POST", "/backups", {"crossGroup": cross_group, "rateLimit": rate_limit})

    def backups(self) -> dict[str, Any]:
        return self._cluster("GET", "/backups")

    def area(self) -> dict[str, Any]:
        return self._cluster("GET", "/area")

    def reform_area(self) -> dict[str, Any]:
        return self._cluster("POST", "/area/reform")


class LocalClient:
    """Client of the blade's local API on its Unix socket (used by the file-processor side)."""

    def __init__(self, socket_path: str, *, timeout: float = 30.0) -> None:
        self.socket_path = socket_path
        self.timeout = timeout

    def _req(self, method: str, path: str, body: Any = None) -> Any:
        conn = UnixHTTPConnection(self.socket_path, timeout=self.timeout)
        return _call(conn, method, path, body=body, headers={})

    def store_status(self, status: dict[str, Any]) -> dict[str, Any]:
        """Ask the block processor to write ``status`` into this blade's slot (claim 2)."""
        result: dict[str, Any] = self._req("PUT", "/v1/status", status)
        return result

    def stored_status(self) -> dict[str, Any]:
        result: dict[str, Any] = self._req("GET", "/v1/status")
        return result

    def load(self) -> dict[str, Any]:
        result: dict[str, Any] = self._req("GET", "/v1/load")
        return result


class FPControlClient:
    """Client of the file processor's control socket (``nasblade.bladeapi.agent``)."""

    def __init__(self, socket_path: str, *, timeout: float = 120.0) -> None:
        self.socket_path = socket_path
        self.timeout = timeout

    def _req(self, method: str, path: str, body: Any = None) -> Any:
        conn = UnixHTTPConnection(self.socket_path, timeout=self.timeout)
        return _call(conn, method, path, body=body, headers={})

    def file_systems(self) -> dict[str, Any]:
        result: dict[str, Any] = self._req("GET", "/v1/filesystems")
        return result

    def add(self, spec: dict[str, Any]) -> dict[str, Any]:
        result: dict[str, Any] = self._req("POST", "/v1/filesystems", spec)
        return result

    def remove(self, name: str) -> dict[str, Any]:
        result: dict[str, Any] = self._req("DELETE", f"/v1/filesystems/{name}")
        return result
