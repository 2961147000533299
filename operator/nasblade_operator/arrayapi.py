"""Everything the operator asks of an array's controller, in one module.

Talks to the control API (HTTP + JSON, bearer token; contract in docs/control-api.md) with
aiohttp (the session of ``sessions``, which the caller hands in from the operator's state)
so the kopf event loop never waits on a thread, and reaches LUs over NBD with the
data plane's own code (in a worker thread): ``nasblade.program`` seeds the program LU,
``nasblade.fs`` formats file-system LUs. Handlers call the public functions and methods here
(never ``ArrayAPI._request``) and see ``ArrayUnavailable`` (transient: retry later) or
``ArrayRefused`` (the controller said no, e.g. no space: the user must act).
"""

from __future__ import annotations

import asyncio
import dataclasses
from typing import Any, TypedDict

import aiohttp

from nasblade_operator import naming, sessions

#: The ``"reason"`` of the controller's ``409`` for an LU the devices have no room for
#: (docs/control-api.md); a controller from before it answered ``507``.
NO_SPACE = "NoSpace"


class ArrayUnavailable(RuntimeError):
    """The controller cannot be reached or answered 5xx (other than an older controller's 507)."""


class ArrayRefused(RuntimeError):
    """The controller refused a request (4xx; 507 from an older controller): ``status``, the
    message and ``reason``, the error body's machine-readable ``"reason"`` ("" when it has
    none; ``NoSpace`` for a 507 too, so a rolling upgrade reads either as no space). A 409 is
    "exists" or "busy" only when it is not ``no_space``."""

    def __init__(self, status: int, message: str, *, reason: str = "") -> None:
        super().__init__(message)
        self.status = status
        self.reason = NO_SPACE if status == 507 else reason

    @property
    def no_space(self) -> bool:
        """The devices have no room for the LU (created or grown): the user must act."""
        return self.reason == NO_SPACE

    @classmethod
    def from_reply(cls, status: int, data: Any, what: str) -> ArrayRefused:
        """The refusal of ``what`` (``METHOD /path``) as the controller answered it."""
        body = data if isinstance(data, dict) else {}
        message, reason = body.get("error", ""), body.get("reason", "")
        return cls(status, f"{what}: HTTP {status} {message}".strip(),
                   reason=reason if isinstance(reason, str) else "")


@dataclasses.dataclass(frozen=True)
class LU:
    """One LU as the controller lists it; ``created`` identifies this incarnation of the name."""

    name: str
    size: int
    created: str = ""

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> LU:
        return cls(name=str(d["name"]), size=int(d["size"]), created=str(d.get("created", "")))


@dataclasses.dataclass(frozen=True)
class Ensured:
    """What ``ArrayAPI.ensure_lus`` did: the LUs it created or grew, and every LU afterwards."""

    changed: list[str]
    lus: dict[str, LU]


@dataclasses.dataclass(frozen=True)
class Figures:
    """Load and cache figures for the DiskArray status."""

    iops: float
    read_mbps: float
    write_mbps: float
    queue_depth: float
    dirty_ratio: float
    cache_size: int
    cache_used: int
    dirty_bytes: int
    hit_ratio: float


class ExtentRecord(TypedDict):
    """One contiguous run of an LU on one device, as ``status.lus[].extents`` records it."""

    device: int
    offset: int
    length: int


class LUPlacement(TypedDict):
    """One LU in ``status.lus``: its size and its runs on the devices."""

    name: str
    size: int
    extents: list[ExtentRecord]


def lu_layout(lus: list[dict[str, Any]]) -> list[LUPlacement]:
    """The status form of the controller's LU listing, sorted by name.

    The controller lists one run per device per segment (one segment per grow); runs of the
    same device that touch (``offset + length`` of one is the ``offset`` of the next) are
    merged, so an LU grown many times into free space that followed it stays one run per
    device. Runs are ordered by device, then offset.
    """
    out: list[LUPlacement] = []
    for lu in sorted(lus, key=lambda d: str(d["name"])):
        runs = sorted((int(e["device"]), int(e["offset"]), int(e["length"])) for e in lu.get("extents", []))
        merged: list[ExtentRecord] = []
        for device, offset, length in runs:
            last = merged[-1] if merged else None
            if last is not None and last["device"] == device and last["offset"] + last["length"] == offset:
                last["length"] += length
            else:
                merged.append({"device": device, "offset": offset, "length": length})
        out.append({"name": str(lu["name"]), "size": int(lu["size"]), "extents": merged})
    return out


#: Per call to a controller (the session is shared with the blade calls, ``sessions``).
TIMEOUT = aiohttp.ClientTimeout(total=10)


class ArrayAPI:
    """The control API of one array, called through the operator's session holder."""

    def __init__(self, http: sessions.Sessions, base_url: str, *, token: str) -> None:
        self._http = http
        self.base = base_url.rstrip("/") + "/v1"
        self._headers = {"Authorization": f"Bearer {token}"}

    async def _request(self, method: str, path: str, body: Any = None) -> Any:
        try:
            async with self._http.session().request(method, self.base + path, json=body, headers=self._headers,
                                                    timeout=TIMEOUT) as r:
                data: Any = await r.json(content_type=None) if r.content_length != 0 else None
                if r.status >= 500 and r.status != 507:  # 507: an older controller's no space
                    raise ArrayUnavailable(f"{method} {path}: HTTP {r.status}")
                if r.status >= 400:
                    raise ArrayRefused.from_reply(r.status, data, f"{method} {path}")
                return data
        except (aiohttp.ClientError, TimeoutError, ValueError) as exc:
            raise ArrayUnavailable(f"{method} {path}: {exc or type(exc).__name__}") from exc

    async def list_lus(self) -> dict[str, LU]:
        data = await self._request("GET", "/lus")
        return {d["name"]: LU.from_json(d) for d in data.get("lus", [])}

    async def layout(self) -> list[LUPlacement]:
        """Every LU with where it lies on the devices (``GET /v1/lus``), for ``status.lus``."""
        data = await self._request("GET", "/lus")
        return lu_layout(data.get("lus", []) if isinstance(data, dict) else [])

    async def get_lu(self, name: str) -> LU:
        return LU.from_json(await self._request("GET", f"/lus/{name}"))

    async def ensure_lus(self, wanted: dict[str, int]) -> Ensured:
        """Create missing LUs, grow smaller ones; say which, and what every LU looks like now.

        Idempotent: one GET when everything exists (a restarted operator creates nothing).
        """
        have = await self.list_lus()
        changed: list[str] = []
        for name, size in wanted.items():
            lu = have.get(name)
            if lu is None:
                try:
                    have[name] = LU.from_json(await self._request("POST", "/lus", {"name": name, "size": size}))
                except ArrayRefused as exc:
                    if exc.status != 409 or exc.no_space:  # 409 (not no space): created meanwhile
                        raise
                    have[name] = await self.get_lu(name)
                changed.append(name)
            elif lu.size < size:
                have[name] = LU.from_json(await self._request("PATCH", f"/lus/{name}", {"size": size}))
                changed.append(name)
        return Ensured(changed=changed, lus=have)

    async def figures(self) -> Figures:
        load, cache = await asyncio.gather(self._request("GET", "/load"), self._request("GET", "/cache"))
        mbps = load.get("mbps") or {}
        return Figures(
            iops=float(load.get("iops", 0.0)),
            read_mbps=float(mbps.get("read", 0.0)),
            write_mbps=float(mbps.get("write", 0.0)),
            queue_depth=float(load.get("queueDepth", 0.0)),
            dirty_ratio=float(cache.get("dirtyRatio", load.get("dirtyRatio", 0.0))),
            cache_size=int(cache.get("size", 0)),
            cache_used=int(cache.get("used", 0)),
            dirty_bytes=int(cache.get("dirtyBytes", 0)),
            hit_ratio=float(cache.get("hitRatio", 0.0)),
        )

    async def replace_device(self, index: int) -> dict[str, Any]:
        """Replace failed device ``index`` by a new, empty one, rebuilt online (admin token:
        an ``ArrayAPI`` made with the array's admin token; ``ArrayRefused`` 409 when the device
        is not failed or nothing holds a copy to rebuild from)."""
        data = await self._request("POST", f"/array/devices/{index}/replace", {})
        return data if isinstance(data, dict) else {}

    async def array(self) -> dict[str, Any]:
        """The array's redundancy state as ``GET /v1/array`` answers it (protection, devices and
        their states and error counters, rebuild, scrub), read by ``diskarray/devices.py``."""
        data = await self._request("GET", "/array")
        return data if isinstance(data, dict) else {}

    async def copy_jobs(self) -> list[dict[str, Any]]:
        """The copy engine's jobs (running and recent), as ``GET /v1/copy-jobs`` lists them."""
        data = await self._request("GET", "/copy-jobs")
        jobs: list[dict[str, Any]] = data.get("jobs", []) if isinstance(data, dict) else []
        return jobs


def load_percent(f: Figures, *, queue_budget: float = 32.0) -> int:
    """The controller's load as the percentage ``spec.backup.loadThreshold`` is compared to.

    The larger of the queue depth against a budget of ``queue_budget`` outstanding requests
    and the dirty share of the cache: both say a backup copy now would slow the blades.
    """
    return min(100, round(100 * max(f.queue_depth / queue_budget, f.dirty_ratio)))


#: NBD address -> the operator's client credentials for it (``nbdtls.admin_dir``): the
#: controller serves NBD over TLS only, to certificates of its array's CA
_NBD_TLS: dict[str, str] = {}


def use_nbd_tls(nbd: str, directory: str | None) -> None:
    """Open LUs at ``nbd`` over TLS with the client certificate in ``directory`` (None: plaintext,
    for a controller started without ``--tls-dir``, as tier-1 tests do)."""
    if directory is None:
        _NBD_TLS.pop(nbd, None)
    else:
        _NBD_TLS[nbd] = directory


def nbd_url(nbd: str, lu: str) -> str:
    """The URL the operator opens ``lu`` at ``nbd`` by."""
    directory = _NBD_TLS.get(nbd)
    if directory is None:
        return f"nbd://{nbd}/{lu}"
    return f"nbds://{nbd}/{lu}?tls-certificates={directory}"


def _seed_sync(nbd: str, version: str) -> bool:
    from nasblade.nbd.client import NBDBlockDevice
    from nasblade.program import bundle
    from nasblade.program.catalog import ProgramStore

    dev = NBDBlockDevice.connect(nbd_url(nbd, naming.LU_PROGRAM))
    try:
        store = ProgramStore(dev)
        if not store.is_blank() and store.catalog().get(version) is not None:
            return False
        store.push(bundle.build(version=version), version=version, select=True)
        return True
    finally:
        dev.close()


async def seed_program(nbd: str, *, version: str) -> bool:
    """Put the software bundled in this image into the program LU as ``version``.

    Returns False when that version is already there. Runs the data plane's NBD client and
    program-LU code in a worker thread. The caller holds the LU's lock
    (``OperatorState.lu_locks``): two DiskArrays pointed at the same controller (the benchmark
    shares one) must not both find the version missing and both write it.
    """
    try:
        return await asyncio.to_thread(_seed_sync, nbd, version)
    except (OSError, ConnectionError) as exc:
        raise ArrayUnavailable(f"seeding the program LU over nbd://{nbd}: {exc}") from exc


def _format_errors() -> tuple[type[BaseException], ...]:
    """What formatting an LU over NBD can raise: socket and NBD errors (``OSError``, including
    ``NBDError``), an NBD protocol violation, SQLite errors from the metadata store, and the
    file-system layout refusing the device (too small). Imported late, like the rest of the
    data plane, so the operator loads only what it uses."""
    import apsw
    from nasblade.fs import layout
    from nasblade.nbd import proto

    return (OSError, proto.ProtocolError, apsw.Error, layout.LayoutError)


def _mkfs_sync(nbd: str, lu: str, *, root_mode: int) -> None:
    from nasblade.fs import fs as fsmod
    from nasblade.nbd.client import NBDBlockDevice

    with NBDBlockDevice.connect(nbd_url(nbd, lu)) as dev:
        fsmod.mkfs(dev, root_mode=root_mode)
        dev.flush()


def _read_head_sync(nbd: str, lu: str, length: int) -> bytes:
    from nasblade.nbd.client import NBDBlockDevice

    with NBDBlockDevice.connect(nbd_url(nbd, lu)) as dev:
        return dev.pread(0, min(length, dev.size))


async def read_lu_head(nbd: str, lu: str, *, length: int) -> bytes:
    """The first ``length`` bytes of ``lu`` (fewer if it is smaller), read over NBD in a worker thread.

    Raises ``ArrayUnavailable`` when the LU cannot be reached or read.
    """
    try:
        return await asyncio.to_thread(_read_head_sync, nbd, lu, length)
    except _format_errors() as exc:
        raise ArrayUnavailable(f"reading LU {lu} over nbd://{nbd}: {exc or type(exc).__name__}") from exc


async def format_filesystem(nbd: str, lu: str, *, root_mode: int) -> None:
    """Make an empty nasblade file system on ``lu`` (``nasblade.fs.fs.mkfs``, in a worker thread).

    Raises ``ArrayUnavailable`` when the LU cannot be reached or written.
    """
    try:
        await asyncio.to_thread(_mkfs_sync, nbd, lu, root_mode=root_mode)
    except _format_errors() as exc:
        raise ArrayUnavailable(f"formatting LU {lu} over nbd://{nbd}: {exc or type(exc).__name__}") from exc
