"""Everything the operator asks of a blade, in one module: the blade management API.

The file processor of each blade serves a small HTTP + JSON API on port 8090 (bearer token:
the array's control token). The calls the operator makes, and nothing else:

  GET  /v1/status                          -> {"version", "fileSystems", "heartbeatAge", "activeArea", ..}
  POST /v1/filesystems/{fs}/takeover       -> 200 once the blade serves fs (idempotent)
  POST /v1/filesystems/{fs}/release        -> 200 once the blade no longer serves fs (idempotent)
  POST /v1/backups {"portions": [..], "trigger": ..} -> 200 {"result": "Succeeded"|"Failed", "message"}

``handlers`` call ``takeover``/``release``/``backup``; failures raise ``BladeUnavailable``
so the caller retries on its next pass. Keep the exact paths here so adapting to the blade's
API is a change to this file only.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import aiohttp


class BladeUnavailable(RuntimeError):
    """The blade could not be reached or did not do what was asked."""


@dataclasses.dataclass(frozen=True)
class BackupResult:
    succeeded: bool
    message: str


_session: aiohttp.ClientSession | None = None


def _http() -> aiohttp.ClientSession:
    global _session
    if _session is None or _session.closed:
        _session = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=30))
    return _session


def reset() -> None:
    """Forget the session without closing it (a new event loop is starting: operator restart in tests)."""
    global _session
    _session = None


async def close() -> None:
    if _session is not None:
        await _session.close()


async def _post(base: str, path: str, *, token: str, body: Any = None) -> Any:
    url = base.rstrip("/") + "/v1" + path
    try:
        async with _http().post(url, json=body or {}, headers={"Authorization": f"Bearer {token}"}) as r:
            data: Any = await r.json(content_type=None) if r.content_length != 0 else None
            if r.status >= 400:
                message = data.get("error", "") if isinstance(data, dict) else ""
                raise BladeUnavailable(f"POST {url}: HTTP {r.status} {message}".strip())
            return data
    except (aiohttp.ClientError, TimeoutError, ValueError) as exc:
        raise BladeUnavailable(f"POST {url}: {exc or type(exc).__name__}") from exc


@dataclasses.dataclass(frozen=True)
class BladeStatus:
    heartbeat_age: float | None  # seconds since the blade last wrote its heartbeat into the portion
    active_area: str  # "portion" or "backup"
    version: str | None
    failed: str | None = None  # why the blade declared itself failed (its file processor lost what it served)
    file_systems: frozenset[str] | None = None  # what its file processor serves (None: not reported)


async def status(base: str, *, token: str) -> BladeStatus:
    """The blade's own view: heartbeat age, active processor-info area, software version."""
    url = base.rstrip("/") + "/v1/status"
    try:
        async with _http().get(url, headers={"Authorization": f"Bearer {token}"},
                               timeout=aiohttp.ClientTimeout(total=2)) as r:
            if r.status >= 400:
                raise BladeUnavailable(f"GET {url}: HTTP {r.status}")
            data: Any = await r.json(content_type=None)
    except (aiohttp.ClientError, TimeoutError, ValueError) as exc:
        raise BladeUnavailable(f"GET {url}: {exc or type(exc).__name__}") from exc
    age = data.get("heartbeatAge")
    return BladeStatus(
        heartbeat_age=float(age) if isinstance(age, int | float) else None,
        active_area="backup" if data.get("activeArea") == "backup" else "portion",
        version=data.get("version"),
        failed=data["failed"] if isinstance(data.get("failed"), str) else None,
        file_systems=frozenset(map(str, data["fileSystems"])) if isinstance(data.get("fileSystems"), list) else None,
    )


async def takeover(base: str, fs: str, *, token: str) -> None:
    """Ask the blade at ``base`` to take file system ``fs`` over (reserve, recover, export)."""
    await _post(base, f"/filesystems/{fs}/takeover", token=token)


async def release(base: str, fs: str, *, token: str) -> None:
    """Ask the blade at ``base`` to stop serving ``fs`` (flush, unexport, drop reservation)."""
    await _post(base, f"/filesystems/{fs}/release", token=token)


async def backup(base: str, *, token: str, portions: list[int], trigger: str) -> BackupResult:
    """Ask the blade to copy ``portions`` into their backup areas (claims 8, 9, 17-19)."""
    data = await _post(base, "/backups", token=token, body={"portions": portions, "trigger": trigger})
    ok = isinstance(data, dict) and data.get("result") == "Succeeded"
    message = str(data.get("message", "")) if isinstance(data, dict) else ""
    return BackupResult(succeeded=ok, message=message)
