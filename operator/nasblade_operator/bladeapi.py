"""Everything the operator asks of a blade, in one module: the blade management API.

The file processor of each blade serves a small HTTP + JSON API on port 8090 (bearer token:
the array's control token). The calls the operator makes, and nothing else:

  GET  /v1/status                          -> {"version", "fileSystems", "heartbeatAge", "activeArea", ..}
  POST /v1/filesystems/{fs}/takeover       -> 200 once the blade serves fs (idempotent)
  POST /v1/filesystems/{fs}/release        -> 200 once the blade no longer serves fs (idempotent)
  POST /v1/backups {"portions": [..], "trigger": ..} -> 200 {"result": "Succeeded"|"Failed", "message"}
  GET, PUT /v1/cluster/config              -> the group's file systems, changed while the blade runs

Callers (``clustergroup/daemon.py`` probes ``status``; ``clustergroup/actor.py`` calls
``takeover``/``release``; ``clustergroup/backups.py`` calls ``backup``) hand in the operator's
session holder (``sessions``); failures raise ``BladeUnavailable`` so the caller retries on
its next pass. Keep the exact paths here so adapting to the blade's
API is a change to this file only.

The API is HTTPS (``endpoints``: ``https://<podIP>:8090``); the blade's certificate
(``nbdtls``) is checked against its array's CA and its pod name, ``blade`` in every call here.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import aiohttp

from nasblade_operator import sessions


class BladeUnavailable(RuntimeError):
    """The blade could not be reached or did not do what was asked."""


@dataclasses.dataclass(frozen=True)
class BackupResult:
    succeeded: bool
    message: str


#: Per call: take over, release and backup wait for the blade; a status read must be quick.
TIMEOUT = aiohttp.ClientTimeout(total=30)
STATUS_TIMEOUT = aiohttp.ClientTimeout(total=2)


def _tls(base: str, blade: str) -> dict[str, Any]:
    """The request's TLS arguments: the certificate must name the pod (dialled by its IP)."""
    return {"server_hostname": blade} if base.startswith("https://") else {}


async def _call(http: sessions.Sessions, method: str, base: str, path: str, *, blade: str, token: str,
                body: Any = None) -> Any:
    url = base.rstrip("/") + "/v1" + path
    try:
        async with http.session().request(method, url, headers={"Authorization": f"Bearer {token}"},
                                          json=(body or {}) if method != "GET" else None,
                                          timeout=TIMEOUT, **_tls(base, blade)) as r:
            data: Any = await r.json(content_type=None) if r.content_length != 0 else None
            if r.status >= 400:
                message = data.get("error", "") if isinstance(data, dict) else ""
                raise BladeUnavailable(f"{method} {url}: HTTP {r.status} {message}".strip())
            return data
    except (aiohttp.ClientError, TimeoutError, ValueError) as exc:
        raise BladeUnavailable(f"{method} {url}: {exc or type(exc).__name__}") from exc


async def _post(http: sessions.Sessions, base: str, path: str, *, blade: str, token: str, body: Any = None) -> Any:
    return await _call(http, "POST", base, path, blade=blade, token=token, body=body)


@dataclasses.dataclass(frozen=True)
class BladeStatus:
    heartbeat_age: float | None  # seconds since the blade last wrote its heartbeat into the portion
    active_area: str  # "portion" or "backup"
    failed: str | None = None  # why the blade declared itself failed (its file processor lost what it served)
    file_systems: frozenset[str] | None = None  # what its file processor serves (None: not reported)
    known: frozenset[str] | None = None  # the file systems it may serve, as configured (None: not reported)


async def status(http: sessions.Sessions, base: str, *, blade: str, token: str) -> BladeStatus:
    """The blade's own view: heartbeat age, active processor-info area, whether it failed, what it serves."""
    url = base.rstrip("/") + "/v1/status"
    try:
        async with http.session().get(url, headers={"Authorization": f"Bearer {token}"}, timeout=STATUS_TIMEOUT,
                                      **_tls(base, blade)) as r:
            if r.status >= 400:
                raise BladeUnavailable(f"GET {url}: HTTP {r.status}")
            data: Any = await r.json(content_type=None)
    except (aiohttp.ClientError, TimeoutError, ValueError) as exc:
        raise BladeUnavailable(f"GET {url}: {exc or type(exc).__name__}") from exc
    age = data.get("heartbeatAge")
    return BladeStatus(
        heartbeat_age=float(age) if isinstance(age, int | float) else None,
        active_area="backup" if data.get("activeArea") == "backup" else "portion",
        failed=data["failed"] if isinstance(data.get("failed"), str) else None,
        file_systems=frozenset(map(str, data["fileSystems"])) if isinstance(data.get("fileSystems"), list) else None,
        known=frozenset(map(str, data["knownFileSystems"])) if isinstance(data.get("knownFileSystems"), list) else None,
    )


async def takeover(http: sessions.Sessions, base: str, fs: str, *, blade: str, token: str) -> None:
    """Ask the blade at ``base`` to take file system ``fs`` over (reserve, recover, export)."""
    await _post(http, base, f"/filesystems/{fs}/takeover", blade=blade, token=token)


async def release(http: sessions.Sessions, base: str, fs: str, *, blade: str, token: str) -> None:
    """Ask the blade at ``base`` to stop serving ``fs`` (flush, unexport, drop reservation)."""
    await _post(http, base, f"/filesystems/{fs}/release", blade=blade, token=token)


async def configure_file_systems(http: sessions.Sessions, base: str, file_systems: list[dict[str, Any]], *,
                                 blade: str, token: str) -> dict[str, Any]:
    """Give the blade its group's file systems while it runs: its configuration as it runs
    (``GET /v1/cluster/config``) with ``fileSystems`` replaced (``PUT``; everything else in it
    changes only with a restart). Answers ``{"added", "removed", "changed", "fileSystems"}``."""
    current = await _call(http, "GET", base, "/cluster/config", blade=blade, token=token)
    if not isinstance(current, dict):
        raise BladeUnavailable(f"{blade}: GET /v1/cluster/config: not a JSON object")
    answer = await _call(http, "PUT", base, "/cluster/config", blade=blade, token=token,
                         body={**current, "fileSystems": file_systems})
    return answer if isinstance(answer, dict) else {}


async def backup(http: sessions.Sessions, base: str, *, blade: str, token: str, portions: list[int],
                 trigger: str) -> BackupResult:
    """Ask the blade to copy ``portions`` into their backup areas (claims 8, 9, 17-19)."""
    data = await _post(http, base, "/backups", blade=blade, token=token,
                       body={"portions": portions, "trigger": trigger})
    ok = isinstance(data, dict) and data.get("result") == "Succeeded"
    message = str(data.get("message", "")) if isinstance(data, dict) else ""
    return BackupResult(succeeded=ok, message=message)
