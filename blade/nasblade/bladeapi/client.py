"""Synchronous clients of the blade's HTTP APIs, on the one client base ``nasblade.bladeapi.http``.

``BladeClient(url, token)`` talks to the management API over TCP (operator tests, the
management terminal, ``nasblade up``'s supervisor, peers asking for a graceful release; see
``nasblade.blockproc.api``), including the cluster-group routes under ``/v1/cluster``
(``nasblade.cluster.api``); ``LocalClient(socket_path)`` talks to the local API over the
pod-private Unix socket (the file processor side of the blade); ``FPControlClient`` to the file
processor's control socket (``nasblade.fileproc.agent``). All return decoded JSON and raise
``BladeAPIError`` with the HTTP status and the server's message on any non-2xx reply.
"""

from __future__ import annotations

import ssl
from typing import Any
from urllib.parse import quote

from nasblade.bladeapi.http import HTTPAPIError, JSONClient


class BladeAPIError(HTTPAPIError):
    """A non-2xx reply of a blade API (management, local, file processor control)."""


class _BladeJSONClient(JSONClient):
    def error(self, status: int, body: dict[str, Any]) -> Exception:
        return BladeAPIError(status, str(body.get("error", body)))

    def _dict(self, method: str, path: str, body: Any = None) -> dict[str, Any]:
        result: dict[str, Any] = self.request(method, path, body)
        return result


class BladeClient(_BladeJSONClient):
    """Client of the blade management API, e.g. ``BladeClient("http://127.0.0.1:9100", token)``."""

    def __init__(self, url: str, token: str, *, timeout: float = 30.0,
                 ssl_context: ssl.SSLContext | None = None, server_hostname: str | None = None) -> None:
        super().__init__(url=url, token=token, timeout=timeout, ssl_context=ssl_context,
                         server_hostname=server_hostname)

    def status(self) -> dict[str, Any]:
        return self._dict("GET", "/v1/status")

    def slots(self) -> dict[str, Any]:
        return self._dict("GET", "/v1/slots")

    def directories(self, fs: str) -> dict[str, Any]:
        """The directory volumes (quota roots) of ``fs``, which this blade must serve."""
        return self._dict("GET", f"/v1/filesystems/{quote(fs, safe='')}/directories")

    def set_directory(self, fs: str, dirname: str, quota_bytes: int, *, mode: int = 0o777,
                      source: dict[str, str] | None = None) -> dict[str, Any]:
        """Make or resize directory volume ``/dirname`` of ``fs`` (at most ``quota_bytes``); a
        new one filled from ``source`` (``{"snapshot": S}`` or ``{"directory": D}``) if given."""
        body: dict[str, Any] = {"quotaBytes": quota_bytes, "mode": mode}
        if source is not None:
            body["source"] = source
        return self._dict("PUT", f"/v1/filesystems/{quote(fs, safe='')}/directories/{quote(dirname, safe='')}", body)

    def remove_directory(self, fs: str, dirname: str) -> dict[str, Any]:
        """Delete directory volume ``/dirname`` of ``fs`` with its data."""
        return self._dict("DELETE", f"/v1/filesystems/{quote(fs, safe='')}/directories/{quote(dirname, safe='')}")

    def snapshots(self, fs: str) -> dict[str, Any]:
        """The snapshots of ``fs``'s directory volumes."""
        return self._dict("GET", f"/v1/filesystems/{quote(fs, safe='')}/snapshots")

    def snapshot_directory(self, fs: str, dirname: str, snapname: str) -> dict[str, Any]:
        """Snapshot directory volume ``/dirname`` of ``fs`` as ``snapname`` (idempotent)."""
        return self._dict("PUT", f"/v1/filesystems/{quote(fs, safe='')}/snapshots/{quote(snapname, safe='')}",
                          {"directory": dirname})

    def remove_snapshot(self, fs: str, snapname: str) -> dict[str, Any]:
        """Delete snapshot ``snapname`` of ``fs`` (no error when there is none)."""
        return self._dict("DELETE", f"/v1/filesystems/{quote(fs, safe='')}/snapshots/{quote(snapname, safe='')}")

    # -- the cluster-group routes (``nasblade.cluster.api``) -----------------------------------

    def cluster(self) -> dict[str, Any]:
        """The group as this blade sees it: members, ownership, active area, takeovers, backups."""
        return self._dict("GET", "/v1/cluster")

    def check_takeover(self) -> dict[str, Any]:
        """Per file system: could this blade take it over now, and why not."""
        return self._dict("GET", "/v1/cluster/check-takeover")

    def take_over_fs(self, fs: str, *, force: bool = False) -> dict[str, Any]:
        """Take ``fs`` over (a live owner is asked to release first unless ``force`` fences it)."""
        return self._dict("POST", f"/v1/cluster/filesystems/{quote(fs, safe='')}/takeover", {"force": force})

    def release_fs(self, fs: str, *, taker: str | None = None) -> dict[str, Any]:
        """Release ``fs`` (for ``taker``, a graceful move: the blade takes it back if ``taker`` dies first)."""
        return self._dict("POST", f"/v1/cluster/filesystems/{quote(fs, safe='')}/release",
                          None if taker is None else {"for": taker})

    def give_back(self) -> dict[str, Any]:
        """Take back every file system whose home is this blade."""
        return self._dict("POST", "/v1/cluster/giveback")

    def backup(self, *, cross_group: list[str] | bool = False, rate_limit: int = 0) -> dict[str, Any]:
        """Back the group's portion (and ``cross_group``'s: a list of groups, or every one) up now."""
        return self._dict("POST", "/v1/cluster/backups", {"crossGroup": cross_group, "rateLimit": rate_limit})

    def backups(self) -> dict[str, Any]:
        return self._dict("GET", "/v1/cluster/backups")

    def area(self) -> dict[str, Any]:
        return self._dict("GET", "/v1/cluster/area")

    def reform_area(self) -> dict[str, Any]:
        return self._dict("POST", "/v1/cluster/area/reform")


class LocalClient(_BladeJSONClient):
    """Client of the blade's local API on its Unix socket (used by the file-processor side)."""

    def __init__(self, socket_path: str, *, timeout: float = 30.0) -> None:
        super().__init__(unix=socket_path, timeout=timeout)

    def store_status(self, status: dict[str, Any]) -> dict[str, Any]:
        """Ask the block processor to write ``status`` into this blade's slot (claim 2)."""
        return self._dict("PUT", "/v1/status", status)

    def stored_status(self) -> dict[str, Any]:
        return self._dict("GET", "/v1/status")

    def load(self) -> dict[str, Any]:
        return self._dict("GET", "/v1/load")


class FPControlClient(_BladeJSONClient):
    """Client of the file processor's control socket (``nasblade.fileproc.agent``)."""

    def __init__(self, socket_path: str, *, timeout: float = 120.0) -> None:
        super().__init__(unix=socket_path, timeout=timeout)

    def file_systems(self) -> dict[str, Any]:
        return self._dict("GET", "/v1/filesystems")

    def add(self, spec: dict[str, Any]) -> dict[str, Any]:
        return self._dict("POST", "/v1/filesystems", spec)

    def remove(self, name: str) -> dict[str, Any]:
        return self._dict("DELETE", f"/v1/filesystems/{name}")

    def set_exports(self, name: str, exports: list[dict[str, Any]]) -> dict[str, Any]:
        return self._dict("PUT", f"/v1/filesystems/{name}/exports", {"exports": exports})

    def set_listen(self, name: str, listen: dict[str, Any]) -> dict[str, Any]:
        return self._dict("PUT", f"/v1/filesystems/{name}/listen", listen)

    def directories(self, name: str) -> dict[str, Any]:
        return self._dict("GET", f"/v1/filesystems/{name}/directories")

    def set_directory(self, name: str, dirname: str, quota_bytes: int, *, mode: int = 0o777,
                      source: dict[str, str] | None = None) -> dict[str, Any]:
        body: dict[str, Any] = {"quotaBytes": quota_bytes, "mode": mode}
        if source is not None:
            body["source"] = source
        return self._dict("PUT", f"/v1/filesystems/{name}/directories/{dirname}", body)

    def remove_directory(self, name: str, dirname: str) -> dict[str, Any]:
        return self._dict("DELETE", f"/v1/filesystems/{name}/directories/{dirname}")

    def snapshots(self, name: str) -> dict[str, Any]:
        return self._dict("GET", f"/v1/filesystems/{name}/snapshots")

    def snapshot_directory(self, name: str, dirname: str, snapname: str) -> dict[str, Any]:
        return self._dict("PUT", f"/v1/filesystems/{name}/snapshots/{snapname}", {"directory": dirname})

    def remove_snapshot(self, name: str, snapname: str) -> dict[str, Any]:
        return self._dict("DELETE", f"/v1/filesystems/{name}/snapshots/{snapname}")

    def calls(self) -> dict[str, Any]:
        """RPC call counts and latency buckets per served file system (``FileProcessor.call_stats``)."""
        return self._dict("GET", "/v1/calls")


__all__ = ["BladeAPIError", "BladeClient", "FPControlClient", "LocalClient"]
