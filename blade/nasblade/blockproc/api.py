"""aiohttp applications of the blade: the management API and the file processor's local API.

Both are thin: every handler calls one method of ``nasblade.blockproc.core.BlockProcessor``.
Routes are declared in tables (``BLADE_ROUTES``, ``LOCAL_ROUTES``). Errors are JSON objects
``{"error": message}`` with a 4xx/5xx status, as in the controller's control API. Bodies are
read by ``nasblade.httpjson.read`` (413 too large, 400 too deep or malformed) and LU names on
paths are checked by ``nasblade.controller.luname.check`` (400), so bad input is never a 500;
an unexpected exception is a JSON 500 with its traceback in the log.

Blade management API (base ``/v1``, bearer token on every route except ``/healthz``; the
group token and the CSI driver's token reach the directory and snapshot routes alone,
``_auth_middleware``):

    GET  /healthz                       {"ok": true}; 503 while failed or without a file processor
    GET  /v1/status                     software version, owned file systems, heartbeat age,
                                        client counts, active processor-info area, load …
    GET  /v1/slots                      every slot of the group's portion (decoded)
    GET  /v1/metrics                    Prometheus text (nasblade.blockproc.metrics): NFS calls by
                                        procedure with latency, takeovers, heartbeat age, served
                                        file systems (and what ``METRICS_EXTRA`` collectors add)
    POST /v1/lus/{lu}/takeover          reserve the LU with a new epoch and serve it
    POST /v1/lus/{lu}/release           flush, stop serving, drop the reservation
    POST /v1/filesystems/{fs}/takeover  reserve the LU (new epoch), file processor mounts and
                                        listens on the file system's address, ownership recorded
    POST /v1/filesystems/{fs}/release   file processor unmounts, flush, reservation dropped
    GET  /v1/filesystems/{fs}/directories         directory volumes of a file system served here
    PUT  /v1/filesystems/{fs}/directories/{dir}   {"quotaBytes": N, "mode": 511}: made or resized
    DELETE /v1/filesystems/{fs}/directories/{dir} the directory volume and its data deleted
                                        (PUT with "source": {"snapshot": S} | {"directory": D}
                                        fills a new one with a copy of it)
    GET  /v1/filesystems/{fs}/snapshots           snapshots of its directory volumes
    PUT  /v1/filesystems/{fs}/snapshots/{snap}    {"directory": D}: a snapshot of D (a copy)
    DELETE /v1/filesystems/{fs}/snapshots/{snap}  the snapshot deleted
    POST /v1/backups                    {"portions": [i, …], "trigger": t} → copy each portion into
                                        its backup area (controller copy engine), record it in
                                        the group record; {"result": Succeeded|Failed, "message", "jobs"}

Local API (Unix socket, mode 0600, no token — only the pod's own containers can reach it):

    PUT  /v1/status     body: the file processor's status (BladeStatus JSON fields)
    GET  /v1/status     this blade's slot as stored
    GET  /v1/load       {"load": {...controller load...}, "error": null}
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import logging
import re
import time
from collections.abc import Awaitable, Callable
from typing import Any

from aiohttp import web
from prometheus_client.registry import Collector

from nasblade import httpjson
from nasblade.bladeapi.client import BladeAPIError
from nasblade.blockproc import metrics
from nasblade.blockproc.core import BlockProcessor
from nasblade.controller import luname
from nasblade.fs import dirvolumes
from nasblade.procinfo.portion import PortionError

log = logging.getLogger(__name__)

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
BP_KEY: web.AppKey[BlockProcessor] = web.AppKey("bp", BlockProcessor)
METRICS_EXTRA: web.AppKey[list[Collector]] = web.AppKey("metrics_extra", list)
"""Collectors of what runs beside the block processor (``nasblade.cluster.api.install`` adds
the cluster member's), rendered into ``GET /v1/metrics`` after the block processor's own."""


def _error(status: int, message: str, **extra: Any) -> web.Response:
    return web.json_response({"error": message, **extra}, status=status)


def _bp(request: web.Request) -> BlockProcessor:
    return request.app[BP_KEY]


async def _healthz(request: web.Request) -> web.Response:
    """Readiness: the blade can serve and take file systems over.

    Not while it is failed (``BlockProcessor.fail``), and not while its file processor is not
    there (no lifeline: not started yet, or its process ended and its container restarts):
    a blade without one cannot take a file system over, so the operator must not pick it as a
    failover or give-back target (a just-restarted pod was Ready before its file processor had
    its control socket, and the give-back to it failed with ENOENT)."""
    bp = _bp(request)
    if bp.failed is not None:
        return web.json_response({"ok": False, "failed": bp.failed}, status=503)
    if bp.settings.fp_unix is not None and not bp.lifeline.alive:
        return web.json_response({"ok": False, "waiting": "no file processor is connected"}, status=503)
    return web.json_response({"ok": True})


async def _status(request: web.Request) -> web.Response:
    return web.json_response(_bp(request).status())


async def _slots(request: web.Request) -> web.Response:
    bp = _bp(request)
    if bp.portion is None:
        return _error(404, "no processor-information portion")
    slots = await asyncio.to_thread(bp.portion.slots)
    return web.json_response(
        {"group": bp.settings.group, "slots": [None if s is None else s.to_json() for s in slots]}
    )


async def _metrics(request: web.Request) -> web.Response:
    bp = _bp(request)
    calls: dict[str, Any] | None = None
    if bp.settings.fp_unix is not None:
        try:
            calls = await bp.file_processor_calls()
        except (OSError, BladeAPIError) as exc:  # the scrape still shows the blade's own figures
            log.info("the file processor's call figures are not available: %s", exc)
    extra: list[Collector] = request.app[METRICS_EXTRA]
    body = metrics.render(bp, calls=calls, now=time.time(), extra=extra)
    return web.Response(body=body, headers={"Content-Type": metrics.CONTENT_TYPE})


def _path_lu(request: web.Request) -> str:
    """The ``{lu}`` of the path if it is a valid LU name (``luname.check``); ``ValueError``."""
    return luname.check(request.match_info["lu"])


async def _lu_takeover(request: web.Request) -> web.Response:
    from nasblade.controller.apiclient import ControlAPIError

    try:
        lu = _path_lu(request)
    except ValueError as exc:
        return _error(400, str(exc), field="lu")
    try:
        epoch = await _bp(request).take_over(lu)
    except OSError as exc:
        return _error(409, f"cannot take over {lu}: {exc}")
    except ControlAPIError as exc:
        return _error(404 if exc.status == 404 else 409, f"cannot take over {lu}: the controller refused: {exc.message}")
    return web.json_response({"lu": lu, "epoch": epoch})


async def _lu_release(request: web.Request) -> web.Response:
    try:
        lu = _path_lu(request)
    except ValueError as exc:
        return _error(400, str(exc), field="lu")
    if lu not in _bp(request).exports.pools:
        return _error(404, f"this blade does not serve {lu}")
    await _bp(request).release(lu)
    return web.json_response({"lu": lu, "released": True})


async def _fs_action(request: web.Request) -> web.Response:
    from nasblade.controller.apiclient import ControlAPIError

    bp = _bp(request)
    name = request.match_info["fs"]
    if name not in bp.settings.fs_specs:
        return _error(404, f"file system {name} is not known to this blade")
    action = bp.take_over_fs if request.path.endswith("/takeover") else bp.release_fs
    try:
        return web.json_response(await action(name))
    except BladeAPIError as exc:
        return _error(409, f"the file processor refused: {exc.message}")
    except ControlAPIError as exc:
        return _error(409, f"the controller refused: {exc.message}")
    except (OSError, RuntimeError, TimeoutError) as exc:
        return _error(409, f"{name}: {exc}")


async def _directories(request: web.Request) -> web.Response:
    """The directory volumes of a file system this blade serves, forwarded to its file
    processor (``nasblade.fileproc.agent``): list, make or resize (PUT), delete (DELETE).
    404 when this blade does not serve the file system (ask its owner); the file processor's
    400/409 come back as they are."""
    from nasblade.bladeapi.client import FPControlClient

    bp = _bp(request)
    name = request.match_info["fs"]
    if name not in bp.handed or bp.settings.fp_unix is None:
        return _error(404, f"this blade does not serve file system {name}")
    fp = FPControlClient(bp.settings.fp_unix)
    dirname = request.match_info.get("dir")
    if dirname is not None:
        try:
            dirvolumes.check_name(dirname)
        except ValueError as exc:
            return _error(400, str(exc), field="dir")
    else:
        dirname = ""
    try:
        if request.method == "GET":
            return web.json_response(await asyncio.to_thread(fp.directories, name))
        if request.method == "DELETE":
            return web.json_response(await asyncio.to_thread(fp.remove_directory, name, dirname))
        body = await httpjson.read(request)
        quota, mode = body.get("quotaBytes"), body.get("mode", 0o777)
        if not isinstance(quota, int) or isinstance(quota, bool) or not isinstance(mode, int) or isinstance(mode, bool):
            return _error(400, "quotaBytes and mode: expected integers", field="quotaBytes")
        source = body.get("source")
        if source is not None and not (isinstance(source, dict) and len(source) == 1
                                       and all(isinstance(v, str) for v in source.values())):
            return _error(400, 'source: expected {"snapshot": NAME} or {"directory": NAME}', field="source")
        return web.json_response(await asyncio.to_thread(fp.set_directory, name, dirname, quota, mode=mode,
                                                         source=source))
    except BladeAPIError as exc:
        return _error(exc.status if exc.status in (400, 404, 409) else 409, exc.message)


async def _snapshots(request: web.Request) -> web.Response:
    """The snapshots of the directory volumes of a file system this blade serves, forwarded to
    its file processor like ``_directories``: list, make (PUT ``{"directory": D}``), delete."""
    from nasblade.bladeapi.client import FPControlClient

    bp = _bp(request)
    name = request.match_info["fs"]
    if name not in bp.handed or bp.settings.fp_unix is None:
        return _error(404, f"this blade does not serve file system {name}")
    fp = FPControlClient(bp.settings.fp_unix)
    snap = request.match_info.get("snap", "")
    try:
        if request.method == "GET":
            return web.json_response(await asyncio.to_thread(fp.snapshots, name))
        dirvolumes.check_name(snap)
        if request.method == "DELETE":
            return web.json_response(await asyncio.to_thread(fp.remove_snapshot, name, snap))
        body = await httpjson.read(request)
        dirname = body.get("directory")
        if not isinstance(dirname, str):
            return _error(400, "directory: the directory volume to snapshot is required", field="directory")
        dirvolumes.check_name(dirname)
        return web.json_response(await asyncio.to_thread(fp.snapshot_directory, name, dirname, snap))
    except ValueError as exc:
        return _error(400, str(exc))
    except BladeAPIError as exc:
        return _error(exc.status if exc.status in (400, 404, 409) else 409, exc.message)


async def _backups(request: web.Request) -> web.Response:
    from nasblade.controller.apiclient import ControlAPIError

    body = await httpjson.read(request)
    if not isinstance(body.get("portions"), list) or not body["portions"]:
        return _error(400, "portions: a non-empty list of portion indexes is required", field="portions")
    try:
        result = await _bp(request).backup(body["portions"], trigger=str(body.get("trigger", "onDemand")))
    except ValueError as exc:
        return _error(400, str(exc), field="portions")
    except ControlAPIError as exc:
        return web.json_response({"result": "Failed", "message": f"the controller refused: {exc.message}"})
    except (RuntimeError, OSError, TimeoutError) as exc:
        return web.json_response({"result": "Failed", "message": str(exc)})
    return web.json_response(result)


async def _put_status(request: web.Request) -> web.Response:
    body = await httpjson.read(request)
    try:
        written = await _bp(request).store_status(body)
    except (KeyError, TypeError, ValueError) as exc:
        return _error(400, f"bad status: {exc}")
    except (PortionError, OSError) as exc:
        return _error(503, f"processor information cannot be written: {exc}")
    return web.json_response(written)


async def _get_status(request: web.Request) -> web.Response:
    try:
        slot = await _bp(request).read_slot()
    except (PortionError, OSError) as exc:
        return _error(503, f"processor information cannot be read: {exc}")
    if slot is None:
        return _error(404, "nothing stored in this blade's slot yet")
    return web.json_response(slot)


async def _load(request: web.Request) -> web.Response:
    bp = _bp(request)
    return web.json_response({"load": bp.load, "error": bp.load_error})


BLADE_ROUTES: list[tuple[str, str, Handler]] = [
    ("GET", "/v1/status", _status),
    ("GET", "/v1/slots", _slots),
    ("GET", "/v1/metrics", _metrics),
    ("POST", "/v1/lus/{lu}/takeover", _lu_takeover),
    ("POST", "/v1/lus/{lu}/release", _lu_release),
    ("POST", "/v1/filesystems/{fs}/takeover", _fs_action),
    ("POST", "/v1/filesystems/{fs}/release", _fs_action),
    ("POST", "/v1/backups", _backups),
    ("GET", "/v1/filesystems/{fs}/directories", _directories),
    ("PUT", "/v1/filesystems/{fs}/directories/{dir}", _directories),
    ("DELETE", "/v1/filesystems/{fs}/directories/{dir}", _directories),
    ("GET", "/v1/filesystems/{fs}/snapshots", _snapshots),
    ("PUT", "/v1/filesystems/{fs}/snapshots/{snap}", _snapshots),
    ("DELETE", "/v1/filesystems/{fs}/snapshots/{snap}", _snapshots),
]

LOCAL_ROUTES: list[tuple[str, str, Handler]] = [
    ("PUT", "/v1/status", _put_status),
    ("GET", "/v1/status", _get_status),
    ("GET", "/v1/load", _load),
    ("GET", "/v1/blade", _status),
]


def _is_directory_route(request: web.Request) -> bool:
    parts = request.path.split("/")
    return len(parts) in (5, 6) and parts[:3] == ["", "v1", "filesystems"] and parts[4] in ("directories", "snapshots")


def _auth_middleware(token: str | None, metrics_token: str | None = None,
                     token_sha256: str | None = None, volume_token: str | None = None,
                     csi_token_sha256: str | None = None) -> Any:
    """The blade token opens every route: the token itself (``nasblade up``), or a token whose
    SHA-256 is ``token_sha256`` (Kubernetes: the operator's token, which the blade never holds);
    the read-only metrics token (a scraper's) opens ``GET /v1/metrics`` alone; the group's token
    (``volume_token``: what the blade itself holds for the controller, ``nasblade.grants``) opens
    the directory-volume and snapshot routes alone, for the CSI driver of a standalone array,
    which derives it from the array's token (a group's blades can write its file systems' LUs
    anyway: it grants nothing new); so does a token whose SHA-256 is ``csi_token_sha256`` (the
    CSI driver's csi token, ``nasblade.grants.csi_token``, of which the blade holds only the
    digest)."""
    expected = f"Bearer {token}".encode() if token else None
    digest = bytes.fromhex(token_sha256) if token_sha256 else None
    scraper = f"Bearer {metrics_token}".encode() if metrics_token else None
    volumes = f"Bearer {volume_token}".encode() if volume_token else None
    csi_digest = bytes.fromhex(csi_token_sha256) if csi_token_sha256 else None

    def _bearer(header: bytes) -> bytes:
        return header[7:].strip() if header[:7].lower() == b"bearer " else b""

    @web.middleware
    async def auth(request: web.Request, handler: Handler) -> web.StreamResponse:
        if request.path == "/healthz":
            return await handler(request)
        given = request.headers.get("Authorization", "").encode()
        if expected is not None and hmac.compare_digest(given, expected):
            return await handler(request)
        bearer = _bearer(given)
        # the digest checks (operator and CSI tokens) share one hash of the bearer token
        hashed = hashlib.sha256(bearer).digest() if bearer and (digest or csi_digest) else b""
        if digest is not None and hashed and hmac.compare_digest(hashed, digest):
            return await handler(request)
        if scraper is not None and hmac.compare_digest(given, scraper):
            if request.path == "/v1/metrics" and request.method == "GET":
                return await handler(request)
            return _error(403, "the metrics token reads GET /v1/metrics only")
        if volumes is not None and hmac.compare_digest(given, volumes):
            if _is_directory_route(request):
                return await handler(request)
            return _error(403, "the group token reaches /v1/filesystems/{fs}/directories and /snapshots only")
        if csi_digest is not None and hashed and hmac.compare_digest(hashed, csi_digest):
            if _is_directory_route(request):
                return await handler(request)
            return _error(403, "the CSI driver's token reaches /v1/filesystems/{fs}/directories and /snapshots only")
        return _error(401, "unauthorized")

    return auth


@web.middleware
async def _json_errors(request: web.Request, handler: Handler) -> web.StreamResponse:
    try:
        return await handler(request)
    except httpjson.BodyError as exc:
        return _error(exc.status, str(exc))
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        return web.json_response({"error": exc.reason}, status=exc.status)
    except Exception:
        log.exception("%s %s failed", request.method, request.path)
        return _error(500, "internal error (see the blade's log)")


def blade_app(bp: BlockProcessor, *, token: str | None, metrics_token: str | None = None,
              token_sha256: str | None = None, volume_token: str | None = None,
              csi_token_sha256: str | None = None) -> web.Application:
    """The management API (``_auth_middleware`` says which token opens which route;
    ``csi_token_sha256``: the hex SHA-256 of the CSI driver's token, ``None``: no csi access)."""
    if not token and not token_sha256:
        raise ValueError("the blade API needs a non-empty token or the SHA-256 of one")
    if csi_token_sha256 is not None and not re.fullmatch(r"[0-9a-f]{64}", csi_token_sha256):
        raise ValueError("the CSI token's SHA-256 must be 64 lower-case hex digits")
    app = web.Application(middlewares=[_json_errors, _auth_middleware(token, metrics_token, token_sha256,
                                                                      volume_token, csi_token_sha256)])
    app[BP_KEY] = bp
    app[METRICS_EXTRA] = []
    app.router.add_get("/healthz", _healthz)
    for method, path, handler in BLADE_ROUTES:
        app.router.add_route(method, path, handler)
    return app


def local_app(bp: BlockProcessor) -> web.Application:
    app = web.Application(middlewares=[_json_errors])
    app[BP_KEY] = bp
    for method, path, handler in LOCAL_ROUTES:
        app.router.add_route(method, path, handler)
    return app
