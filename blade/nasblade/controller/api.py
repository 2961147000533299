"""The control API: HTTP + JSON over the control store (``engine.Engine``) and the copy engine.

The contract (paths, JSON shapes, status codes) is docs/control-api.md; ``OPENAPI`` below is
the machine-readable form served at ``GET /v1/openapi.json``. The routes table ``ROUTES``
maps (method, path) to a handler; two middlewares apply to every route: bearer-token
authentication (``401``; fault injection and ``POST /v1/cache/hold`` additionally need the
admin token, ``403``; fault injection is off unless the controller runs with ``--faults``;
a third, read-only token reads ``GET /v1/metrics`` and nothing else; a *group token*
(``nasblade.grants``, what a blade holds) calls only ``GROUP_ROUTES`` and, on them, only the
LUs the access file lets its group open over NBD (``nasblade.nbd.access``): shared read-only
LUs for reading, and of ``procinfo`` and ``backup`` only its portion; its clients and copy
jobs only, ``403`` otherwise; the *csi token* (``nasblade.grants.csi_token``, what the CSI
driver's controller plugin holds) calls only ``CSI_ROUTES`` and, on them, only the LUs of the
CSI driver's volumes, snapshots and catalog (``nasblade.lunames.is_csi_lu``, as its ``csi``
certificate opens over NBD): it creates, grows, sets read-only, deletes and copies those and
sees only those and the copy jobs between them, ``403`` otherwise) and
error mapping (``engine.NotFound`` → ``404``, ``BadRequest`` and ``httpjson.BodyError`` →
``400``/``413``, ``layout.NoSpace`` → ``409`` with ``"reason": "NoSpace"`` ...), so every
error is a JSON object with an ``"error"`` key; anything else a handler raises (a ``KeyError``
from a bug, say) is a ``500`` with its traceback in the log.
Request bodies are read by ``nasblade.httpjson.read`` (bounded size and depth); LU names on
paths and in new LUs follow ``luname.check``. ``apiclient.ControlClient`` is the Python client.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import json
import logging
from collections.abc import Awaitable, Callable
from typing import Any

from aiohttp import web

from nasblade import grants, httpjson, tls
from nasblade.controller import cache as cache_mod
from nasblade.controller import layout, luname, metrics
from nasblade.controller.copyengine import CopyEngine, CopyError
from nasblade.controller.engine import Engine, NotFound, StaleEpoch
from nasblade.controller.maintenance import Maintenance
from nasblade.nbd import access
from nasblade.tls import Identity

log = logging.getLogger(__name__)

ENGINE: web.AppKey[Engine] = web.AppKey("engine", Engine)
COPIES: web.AppKey[CopyEngine] = web.AppKey("copies", CopyEngine)
#: (user token, admin token, read-only metrics token)
TOKENS: web.AppKey[tuple[str | None, str | None, str | None]] = web.AppKey("tokens", tuple)
#: whether ``/v1/faults`` is on (``--faults``); off, it answers 403 to every token
FAULTS: web.AppKey[bool] = web.AppKey("faults", bool)
MAINT: web.AppKey[Maintenance] = web.AppKey("maintenance", Maintenance)
#: which LUs each cluster group may reach (the NBD access file; group tokens are held to it)
ACCESS: web.AppKey[access.AccessFile] = web.AppKey("access", access.AccessFile)
#: the identity of a group-token request (``group:<name>``, as its blades' certificates say) or
#: of a csi-token request (``csi``, as the CSI plugin's certificate says), in ``request``
CALLER = "nasblade.caller"

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


CAS_MAX = 256 << 10
"""Largest compare range and write of ``compare-and-write`` (bytes)."""


NO_SPACE = "NoSpace"
"""The ``"reason"`` of the ``409`` that refuses an LU (created or grown) the devices have no
room for; a controller before it answered ``507`` (clients take either for no space)."""


class Forbidden(Exception):
    """A group or csi token reaching past its LUs (``403``)."""


class BadRequest(Exception):
    def __init__(self, message: str, *, field: str | None = None) -> None:
        super().__init__(message)
        self.field = field


def _error(status: int, message: str, **extra: Any) -> web.Response:
    return web.json_response({"error": message, **extra}, status=status)


def _path_lu(request: web.Request) -> str:
    """The ``{name}`` of an LU path, checked against the LU name rule (``400`` otherwise)."""
    try:
        return luname.check(request.match_info["name"])
    except ValueError as exc:
        raise BadRequest(str(exc), field="name") from exc


def _found(table: dict[str, Any], key: str, what: str) -> Any:
    value = table.get(key)
    if value is None:
        raise NotFound(f"{what} {key}")
    return value


def _field(body: dict[str, Any], name: str, kind: type | tuple[type, ...], *, default: Any = ...) -> Any:
    if name not in body or body[name] is None:
        if default is ...:
            raise BadRequest(f"missing field {name!r}", field=name)
        return default
    value = body[name]
    if isinstance(value, bool) and kind is int:
        raise BadRequest(f"field {name!r} must be an integer", field=name)
    if kind is int and isinstance(value, float) and value.is_integer():
        value = int(value)  # JSON Schema's integer: 4096.0 is 4096 (the OpenAPI document says integer)
    if not isinstance(value, kind):
        raise BadRequest(f"field {name!r} has the wrong type", field=name)
    if kind is int and isinstance(value, int) and value < 0:
        raise BadRequest(f"field {name!r} must not be negative", field=name)
    return value


# --- middlewares ----------------------------------------------------------------------------


@web.middleware
async def auth_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    if request.path == "/healthz":
        return await handler(request)
    token, admin, metrics = request.app[TOKENS]
    header = request.headers.get("Authorization", "")
    given = header[7:].strip() if header.lower().startswith("bearer ") else ""
    group = grants.group_of(given, token)
    if group is not None:
        if getattr(request.match_info.route, "handler", None) not in GROUP_ROUTES:
            return _error(403, f"a group token (cluster group {group}) cannot {request.method} {request.path}")
        request[CALLER] = Identity(tls.group_identity(group))
        return await handler(request)
    if grants.is_csi(given, token):
        if getattr(request.match_info.route, "handler", None) not in CSI_ROUTES:
            return _error(403, f"the CSI driver's token cannot {request.method} {request.path}: it manages"
                               " the LUs of CSI volumes, snapshots and the catalog only")
        request[CALLER] = Identity(tls.CSI)
        return await handler(request)
    is_admin = _matches(given, admin)
    is_user = is_admin or _matches(given, token)
    if not given or not (is_user or _matches(given, metrics)):
        return _error(401, "unauthorized", hint="send 'Authorization: Bearer <token>'")
    if not is_user:  # the read-only metrics token: the scrape and nothing else
        if request.path == "/v1/metrics" and request.method == "GET":
            return await handler(request)
        return _error(403, "the metrics token reads GET /v1/metrics only")
    if request.path.startswith("/v1/faults") and not request.app[FAULTS]:
        return _error(403, "fault injection is off: start the controller with --faults"
                           " (DiskArray spec.faultInjection, array.faultInjection of nasblade up)")
    admin_only = request.path.startswith(("/v1/faults", "/v1/array/devices/")) or (
        request.path == "/v1/cache/hold" and request.method != "GET")
    if admin_only and not is_admin:
        return _error(403, "admin token required")
    return await handler(request)


def _group(request: web.Request) -> str | None:
    """The cluster group of a group-token request (``None``: the control or admin token, or
    the csi token)."""
    caller: Identity | None = request.get(CALLER)
    return None if caller is None else caller.group


def _who(caller: Identity) -> str:
    """The caller as a ``403`` names it."""
    return "the CSI driver" if caller.csi else f"cluster group {caller.group}"


def _may(request: web.Request, lu: str) -> bool:
    """Whether the caller may reach ``lu`` at all (every LU for the control token)."""
    caller = request.get(CALLER)
    return caller is None or request.app[ACCESS].policy().permits(caller, lu)


def _permit(request: web.Request, lu: str, *, write: bool = False) -> None:
    """``Forbidden`` unless the caller may reach ``lu`` (and change it, with ``write``)."""
    caller = request.get(CALLER)
    if caller is None:
        return
    policy = request.app[ACCESS].policy()
    if not policy.permits(caller, lu):
        raise Forbidden(f"{_who(caller)} has no access to LU {lu}")
    if write and policy.read_only_for(caller, lu):
        raise Forbidden(f"{_who(caller)} may only read LU {lu}")


def _permit_range(request: web.Request, lu: str, offset: int, length: int) -> None:
    """``Forbidden`` unless ``[offset, offset + length)`` of ``lu`` lies in the caller's window
    (a group's portion of ``procinfo`` and ``backup``; ``access.AccessPolicy.windows``)."""
    caller = request.get(CALLER)
    if caller is None:
        return
    if not access.inside(request.app[ACCESS].policy().window(caller, lu), offset, length):
        raise Forbidden(f"{_who(caller)} reaches only its part of LU {lu}: "
                        f"{offset}+{length} is outside it")


def _permit_reservation(request: web.Request, name: str, *, write: bool = False) -> None:
    """Reading or dropping ``name``'s reservation: the caller's LUs, and also any LU whose
    reservation a blade of the caller's group holds -- a file system that just left the group
    (a CSI volume deleted, a file system moved) is released by its blade after the access file
    stopped giving the group its LU, and must not stay reserved for nobody."""
    group = _group(request)
    lu = _engine(request).array.state.lus.get(name)
    if group is not None and lu is not None and lu.holder is not None \
            and (_engine(request).clients.get(lu.holder) or {}).get("group") == group:
        return
    _permit(request, name, write=write)


def _own_client(request: web.Request, record: dict[str, Any]) -> bool:
    group = _group(request)
    return group is None or record.get("group") == group


def _own_job(request: web.Request, job: Any) -> bool:
    return _may(request, job.source) and _may(request, job.target)


def _matches(given: str, secret: str | None) -> bool:
    """``given`` is ``secret`` (compared in constant time; no secret matches nothing)."""
    return bool(given) and bool(secret) and hmac.compare_digest(given.encode(), secret.encode())  # type: ignore[union-attr]


@web.middleware
async def error_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    try:
        return await handler(request)
    except Forbidden as exc:
        return _error(403, str(exc))
    except BadRequest as exc:
        extra = {"field": exc.field} if exc.field else {}
        return _error(400, str(exc), **extra)
    except httpjson.BodyError as exc:
        return _error(exc.status, str(exc))
    except NotFound as exc:
        return _error(404, f"not found: {exc}")
    except StaleEpoch as exc:
        return _error(409, "stale epoch", lastEpoch=exc.last_epoch)
    except FileExistsError as exc:
        return _error(409, f"already exists: {exc}")
    except layout.NoSpace as exc:  # the caller can act (a smaller size, free space): not a 5xx
        return _error(409, f"no space: {exc}", reason=NO_SPACE)
    except CopyError as exc:
        return _error(400, str(exc))
    except web.HTTPException as exc:
        if exc.status >= 400:
            return _error(exc.status, exc.reason)
        raise
    except Exception:
        log.exception("%s %s failed", request.method, request.path)
        return _error(500, "internal error (see the controller's log)")


# --- handlers -------------------------------------------------------------------------------


def _engine(request: web.Request) -> Engine:
    return request.app[ENGINE]


async def get_array(request: web.Request) -> web.Response:
    e = _engine(request)
    arr = e.array
    free = arr.free_bytes()
    usable = arr.usable_bytes()
    status = arr.status()
    vdev_of = {m.index: v.index for v in arr.vdevs for m in v.members}
    devices = [{**d.to_json(), "virtualDevice": vdev_of[d.index], "usable": usable[vdev_of[d.index]],
                "free": free[vdev_of[d.index]]} for d in arr.devices]
    st = arr.state
    scrub = request.app[MAINT].scrub_status()
    # size/free: what LUs can use, after the protection overhead; rawSize: the devices' bytes
    return web.json_response({"uuid": st.uuid, "version": st.version, "seq": st.seq,
                              "stripeUnit": st.unit, "size": sum(usable),
                              "rawSize": sum(st.device_sizes),
                              "free": sum(free), "luCount": len(st.lus), "devices": devices,
                              "scrub": scrub,
                              **{k: v for k, v in status.items() if k != "devices"}})


async def list_lus(request: web.Request) -> web.Response:
    e = _engine(request)
    return web.json_response({"lus": [e.lu_json(lu) for lu in e.array.state.lus.values() if _may(request, lu.name)]})


async def create_lu(request: web.Request) -> web.Response:
    body = await httpjson.read(request)
    name = _field(body, "name", str)
    size = _field(body, "size", int)
    read_only = _field(body, "readOnly", bool, default=False)
    e = _engine(request)
    try:
        luname.check(name)
    except ValueError as exc:
        raise BadRequest(str(exc), field="name") from exc
    _permit(request, name, write=True)
    try:
        lu = e.array.create_lu(name, size, read_only=read_only)
    except ValueError as exc:
        raise BadRequest(str(exc), field="size") from exc
    return web.json_response(e.lu_json(lu), status=201)


async def get_lu(request: web.Request) -> web.Response:
    e = _engine(request)
    name = _path_lu(request)
    _permit(request, name)
    return web.json_response(e.lu_json(e.lu(name)))


async def patch_lu(request: web.Request) -> web.Response:
    e = _engine(request)
    _permit(request, _path_lu(request), write=True)
    lu = e.lu(_path_lu(request))
    body = await httpjson.read(request)
    size = _field(body, "size", int, default=None)
    read_only = _field(body, "readOnly", bool, default=None)
    if size is not None and size < lu.size:
        return _error(409, "LUs can only grow", size=lu.size)
    if size is not None and size != lu.size:
        e.array.grow_lu(lu.name, size)
    if read_only is not None and read_only != lu.read_only:
        lu.read_only = read_only
        e.array.persist()
    return web.json_response(e.lu_json(lu))


async def delete_lu(request: web.Request) -> web.Response:
    name = request.match_info["name"]
    _permit(request, name, write=True)
    if name not in _engine(request).array.state.lus:  # an LU named before the rule can go
        _engine(request).lu(_path_lu(request))
    if request.app[COPIES].busy(name):
        return _error(409, "a running copy job uses this LU")
    _engine(request).delete_lu(name)
    return web.Response(status=204)


async def post_reservation(request: web.Request) -> web.Response:
    e = _engine(request)
    _permit(request, _path_lu(request), write=True)
    name = e.lu(_path_lu(request)).name
    body = await httpjson.read(request)
    holder = _field(body, "holder", str)
    if not holder or ";" in holder or "=" in holder:
        raise BadRequest("holder must be non-empty without ';' or '='", field="holder")
    epoch = _field(body, "epoch", int, default=None)
    if epoch is not None and epoch < 1:
        raise BadRequest("epoch must be >= 1", field="epoch")
    lu = e.reserve(name, holder, epoch)
    return web.json_response({"holder": lu.holder, "epoch": lu.epoch})


async def get_reservation(request: web.Request) -> web.Response:
    _permit_reservation(request, _path_lu(request))
    lu = _engine(request).lu(_path_lu(request))
    return web.json_response({"holder": lu.holder, "epoch": lu.epoch, "lastEpoch": lu.last_epoch})


async def delete_reservation(request: web.Request) -> web.Response:
    _permit_reservation(request, _path_lu(request), write=True)
    _engine(request).release(_path_lu(request))
    return web.Response(status=204)


async def compare_and_write(request: web.Request) -> web.Response:
    """Atomic compare-and-write on an LU (like SCSI COMPARE AND WRITE): if the SHA-256 of
    ``compareLength`` bytes at ``compareOffset`` is ``expectSha256``, write ``data`` (base64)
    at ``writeOffset`` durably (FUA) and answer 200; otherwise write nothing and answer 409
    with the current bytes (``current``, base64) and their hash, so the caller can retry
    without another read. Compare and write run without yielding the event loop in between,
    so no other request of the controller is served between them. Used for the group record
    of a processor-information portion (``nasblade.procinfo.portion.PortionStore.update_group``).
    """
    e = _engine(request)
    _permit(request, _path_lu(request), write=True)
    lu = e.lu(_path_lu(request))
    body = await httpjson.read(request)
    cmp_off = _field(body, "compareOffset", int)
    cmp_len = _field(body, "compareLength", int)
    if cmp_len > CAS_MAX:
        raise BadRequest(f"compareLength must be at most {CAS_MAX}", field="compareLength")
    expect = _field(body, "expectSha256", str)
    write_off = _field(body, "writeOffset", int)
    try:
        data = base64.b64decode(_field(body, "data", str), validate=True)
    except ValueError as exc:
        raise BadRequest(f"data is not base64: {exc}", field="data") from exc
    if not data or len(data) > CAS_MAX:
        raise BadRequest(f"data must be 1..{CAS_MAX} bytes", field="data")
    if cmp_off + cmp_len > lu.size or write_off + len(data) > lu.size:
        raise BadRequest(f"the ranges must lie inside the LU ({lu.size} bytes)")
    _permit_range(request, lu.name, cmp_off, cmp_len)
    _permit_range(request, lu.name, write_off, len(data))
    try:
        current = bytes(e.read(lu, cmp_off, cmp_len))
        digest = hashlib.sha256(current).hexdigest()
        if digest != expect:
            return _error(409, "compare failed: the range changed", currentSha256=digest,
                          current=base64.b64encode(current).decode())
        await e.write(lu, write_off, memoryview(data), fua=True)
    except OSError as exc:
        return _error(503, f"I/O error on {lu.name}: {exc.strerror or exc}")
    return web.json_response({"written": len(data), "sha256": digest})


async def list_clients(request: web.Request) -> web.Response:
    return web.json_response({"clients": [c for c in _engine(request).clients.values() if _own_client(request, c)]})


async def get_client(request: web.Request) -> web.Response:
    record = _found(_engine(request).clients, request.match_info["name"], "client")
    if not _own_client(request, record):  # another group's blade: as if it did not exist
        raise NotFound(f"client {request.match_info['name']}")
    return web.json_response(record)


async def post_client(request: web.Request) -> web.Response:
    from nasblade.controller.array import now

    body = await httpjson.read(request)
    name = _field(body, "name", str)
    if not name:
        raise BadRequest("name must not be empty", field="name")
    record = {"name": name, "group": _field(body, "group", str, default=None),
              "role": _field(body, "role", str, default=None),
              "address": _field(body, "address", str, default=None),
              "attrs": _field(body, "attrs", dict, default={})}
    clients = _engine(request).clients
    group = _group(request)
    if group is not None and (record["group"] != group or not _own_client(request, clients.get(name, record))):
        raise Forbidden(f"cluster group {group} registers only its own blades (group {group!r})")
    stamp = now()
    record["registered"] = clients.get(name, {}).get("registered", stamp)
    record["lastSeen"] = stamp
    clients[name] = record
    return web.json_response(record, status=201)


async def delete_client(request: web.Request) -> web.Response:
    clients, name = _engine(request).clients, request.match_info["name"]
    if not _own_client(request, _found(clients, name, "client")):
        raise NotFound(f"client {name}")
    del clients[name]
    return web.Response(status=204)


async def get_cache(request: web.Request) -> web.Response:
    c = _engine(request).cache
    total = c.stats.hits + c.stats.misses
    return web.json_response({"size": c.capacity, "used": c.used, "dirtyBytes": c.dirty_bytes,
                              "hits": c.stats.hits, "misses": c.stats.misses,
                              "dirtyRatio": c.dirty_ratio, "lineSize": cache_mod.LINE,
                              "destageHeld": _engine(request).destage_held,
                              "pageCacheReads": _engine(request).inline_reads,
                              "hitRatio": c.stats.hits / total if total else 0.0})


async def get_cache_directory(request: web.Request) -> web.Response:
    e = _engine(request)
    name = request.query.get("lu")
    if not name:
        raise BadRequest("query parameter 'lu' is required", field="lu")
    _permit(request, name)
    e.lu(name)
    records = [r.to_json() for r in e.records.values() if r.lu == name]
    return web.json_response({"lu": name, "ranges": e.cache.directory(name), "records": records})


async def post_cache_records(request: web.Request) -> web.Response:
    e = _engine(request)
    body = await httpjson.read(request)
    client = _field(body, "client", str)
    _permit(request, _field(body, "lu", str))
    lu = e.lu(_field(body, "lu", str))
    raw = _field(body, "ranges", list)
    state = _field(body, "state", str, default="dirty")
    if state not in ("dirty", "clean"):
        raise BadRequest("state must be 'dirty' or 'clean'", field="state")
    ranges: list[tuple[int, int]] = []
    for r in raw:
        if (not isinstance(r, list) or len(r) != 2 or not all(type(x) is int and x >= 0 for x in r)
                or r[0] + r[1] > lu.size):
            raise BadRequest("ranges must be [[offset, length], ...] inside the LU", field="ranges")
        ranges.append((r[0], r[1]))
    rec = e.add_record(client, lu.name, ranges, state)
    return web.json_response(rec.to_json(), status=201)


async def delete_cache_records(request: web.Request) -> web.Response:
    e = _engine(request)
    client = request.query.get("client")
    if not client:
        raise BadRequest("query parameter 'client' is required", field="client")
    lu = request.query.get("lu")
    if lu is not None:
        _permit(request, lu)
    for rid in [r.id for r in e.records.values()
                if r.client == client and (lu is None or r.lu == lu) and _may(request, r.lu)]:
        del e.records[rid]
    return web.Response(status=204)


def _hold_json(e: Engine) -> dict[str, Any]:
    return {"hold": e.destage_held, "dirtyBytes": e.cache.dirty_bytes}


async def get_cache_hold(request: web.Request) -> web.Response:
    return web.json_response(_hold_json(_engine(request)))


async def post_cache_hold(request: web.Request) -> web.Response:
    e = _engine(request)
    e.hold_destage(_field(await httpjson.read(request), "hold", bool))
    return web.json_response(_hold_json(e))


async def get_metrics(request: web.Request) -> web.Response:
    jobs = [j.to_json() for j in request.app[COPIES].jobs.values()]
    return web.Response(body=metrics.render(_engine(request), jobs), headers={"Content-Type": metrics.CONTENT_TYPE})


async def get_load(request: web.Request) -> web.Response:
    e = _engine(request)
    return web.json_response({**e.load.figures(), "dirtyRatio": e.cache.dirty_ratio})


async def post_copy_job(request: web.Request) -> web.Response:
    body = await httpjson.read(request)
    _permit(request, _field(body, "source", str))
    _permit(request, _field(body, "target", str), write=True)
    length = _field(body, "length", int)
    _permit_range(request, _field(body, "source", str), _field(body, "sourceOffset", int, default=0), length)
    _permit_range(request, _field(body, "target", str), _field(body, "targetOffset", int, default=0), length)
    job = request.app[COPIES].create(
        source=_field(body, "source", str), source_offset=_field(body, "sourceOffset", int, default=0),
        target=_field(body, "target", str), target_offset=_field(body, "targetOffset", int, default=0),
        length=_field(body, "length", int), rate_limit=_field(body, "rateLimit", int, default=0))
    return web.json_response(job.to_json(), status=201)


async def list_copy_jobs(request: web.Request) -> web.Response:
    return web.json_response({"jobs": [j.to_json() for j in request.app[COPIES].jobs.values() if _own_job(request, j)]})


def _job(request: web.Request) -> Any:
    job = _found(request.app[COPIES].jobs, request.match_info["id"], "copy job")
    if not _own_job(request, job):  # another group's job: as if it did not exist
        raise NotFound(f"copy job {request.match_info['id']}")
    return job


async def get_copy_job(request: web.Request) -> web.Response:
    return web.json_response(_job(request).to_json())


async def delete_copy_job(request: web.Request) -> web.Response:
    return web.json_response(request.app[COPIES].cancel(_job(request).id).to_json())


async def post_fault(request: web.Request) -> web.Response:
    e = _engine(request)
    body = await httpjson.read(request)
    lu = e.lu(_field(body, "lu", str))
    ops = _field(body, "ops", list, default=["read", "write"])
    if not ops or any(op not in ("read", "write") for op in ops):
        raise BadRequest("ops must be a non-empty subset of ['read', 'write']", field="ops")
    fault = e.add_fault(lu.name, _field(body, "offset", int, default=0),
                        _field(body, "length", int, default=lu.size), frozenset(ops))
    return web.json_response(fault.to_json(), status=201)


async def list_faults(request: web.Request) -> web.Response:
    return web.json_response({"faults": [f.to_json() for f in _engine(request).faults.values()]})


async def clear_faults(request: web.Request) -> web.Response:
    _engine(request).clear_faults()
    return web.Response(status=204)


async def delete_fault(request: web.Request) -> web.Response:
    _engine(request).delete_fault(request.match_info["id"])
    return web.Response(status=204)


async def post_device_fault(request: web.Request) -> web.Response:
    e = _engine(request)
    body = await httpjson.read(request)
    ops = _field(body, "ops", list, default=["read", "write"])
    if not ops or any(op not in ("read", "write") for op in ops):
        raise BadRequest("ops must be a non-empty subset of ['read', 'write']", field="ops")
    device = _field(body, "device", int)
    offset = _field(body, "offset", int, default=0)
    length = _field(body, "length", int, default=1 << 62)
    fault = e.add_device_fault(device, offset, length, frozenset(ops))
    return web.json_response(fault.to_json(), status=201)


# --- redundancy: devices, rebuild, scrub -----------------------------------------------------


def _device(request: web.Request) -> int:
    text = request.match_info["id"]
    n = int(text) if text.isascii() and text.isdigit() else -1
    if not 0 <= n < len(_engine(request).array.devices):
        raise NotFound(f"device {text}")
    return n


async def post_device_replace(request: web.Request) -> web.Response:
    """Put a new device in the place of a failed one; it is rebuilt in the background."""
    e = _engine(request)
    n = _device(request)
    body = await httpjson.read(request)
    path = _field(body, "path", str, default=None)
    try:
        await asyncio.get_running_loop().run_in_executor(e.io_pool, e.array.replace, n, path)
    except (ValueError, OSError) as exc:
        return _error(409, f"cannot replace device {n}: {exc}")
    request.app[MAINT].request_rebuild()
    return web.json_response(e.array.devices[n].to_json())


async def post_device_fail(request: web.Request) -> web.Response:
    """Stop using a device (as if it had failed); refused for the last copy of its data."""
    e = _engine(request)
    n = _device(request)
    body = await httpjson.read(request)
    reason = _field(body, "reason", str, default="failed by request")
    await asyncio.get_running_loop().run_in_executor(e.io_pool, e.array.fail_device, n, reason)
    dev = e.array.devices[n]
    if dev.state != "failed":
        return _error(409, f"device {n} holds the last copy of its data: not failed")
    return web.json_response(dev.to_json())


async def post_scrub(request: web.Request) -> web.Response:
    m = request.app[MAINT]
    await httpjson.read(request)
    m.request_scrub()
    return web.json_response(m.scrub_status())


async def get_scrub(request: web.Request) -> web.Response:
    return web.json_response(request.app[MAINT].scrub_status())


async def healthz(request: web.Request) -> web.Response:
    return web.json_response({"ok": True})


async def openapi(request: web.Request) -> web.Response:
    return web.json_response(OPENAPI)


ROUTES: list[tuple[str, str, Handler, str]] = [
    ("GET", "/v1/array", get_array, "Array superblock, devices, sizes and free space"),
    ("GET", "/v1/lus", list_lus, "List LUs"),
    ("POST", "/v1/lus", create_lu, "Create an LU {name, size, readOnly?}"),
    ("GET", "/v1/lus/{name}", get_lu, "Describe an LU"),
    ("PATCH", "/v1/lus/{name}", patch_lu, "Grow an LU {size} and/or set {readOnly}"),
    ("DELETE", "/v1/lus/{name}", delete_lu, "Delete an LU"),
    ("POST", "/v1/lus/{name}/reservation", post_reservation, "Take the reservation {holder, epoch?}; fences older epochs"),
    ("GET", "/v1/lus/{name}/reservation", get_reservation, "Current reservation"),
    ("DELETE", "/v1/lus/{name}/reservation", delete_reservation, "Release the reservation"),
    ("POST", "/v1/lus/{name}/compare-and-write", compare_and_write,
     "Atomic compare-and-write {compareOffset, compareLength, expectSha256, writeOffset, data (base64)}:"
     " 409 with the current bytes when the range changed"),
    ("GET", "/v1/clients", list_clients, "Registered clients (blades)"),
    ("POST", "/v1/clients", post_client, "Register or refresh a client {name, group?, role?, address?, attrs?}"),
    ("GET", "/v1/clients/{name}", get_client, "Describe a client"),
    ("DELETE", "/v1/clients/{name}", delete_client, "Unregister a client"),
    ("GET", "/v1/cache", get_cache, "Cache size, used, dirty bytes, hits, misses, dirty ratio, large reads served from the page cache"),
    ("GET", "/v1/cache/directory", get_cache_directory, "Cached ranges of an LU (?lu=NAME) and registered records"),
    ("POST", "/v1/cache/records", post_cache_records, "Register cache records {client, lu, ranges, state}"),
    ("DELETE", "/v1/cache/records", delete_cache_records, "Clear a client's records (?client=NAME[&lu=LU])"),
    ("GET", "/v1/cache/hold", get_cache_hold, "Whether background destaging is held"),
    ("POST", "/v1/cache/hold", post_cache_hold, "Hold or release background destaging {hold} (admin); FLUSH/FUA still destage"),
    ("GET", "/v1/load", get_load, "Load figures over a short window"),
    ("GET", "/v1/metrics", get_metrics, "Prometheus text exposition: per-LU I/O counters, cache, devices"),
    ("POST", "/v1/copy-jobs", post_copy_job, "Start a copy job"),
    ("GET", "/v1/copy-jobs", list_copy_jobs, "List copy jobs"),
    ("GET", "/v1/copy-jobs/{id}", get_copy_job, "Describe a copy job"),
    ("DELETE", "/v1/copy-jobs/{id}", delete_copy_job, "Cancel a copy job"),
    ("POST", "/v1/faults", post_fault, "Inject a fault {lu, offset, length, ops} (admin)"),
    ("POST", "/v1/faults/devices", post_device_fault,
     "Inject I/O errors on a device of the array {device, offset, length, ops} (admin)"),
    ("POST", "/v1/array/devices/{id}/replace", post_device_replace,
     "Replace a failed device by a new one {path?} (default: a new file at the old path); rebuilt online (admin)"),
    ("POST", "/v1/array/devices/{id}/fail", post_device_fail, "Mark a device failed {reason?} (admin)"),
    ("GET", "/v1/array/scrub", get_scrub, "Scrub progress and the last result"),
    ("POST", "/v1/array/scrub", post_scrub, "Start a scrub pass now {}"),
    ("GET", "/v1/faults", list_faults, "List injected faults (admin)"),
    ("DELETE", "/v1/faults", clear_faults, "Clear all faults (admin)"),
    ("DELETE", "/v1/faults/{id}", delete_fault, "Clear one fault (admin)"),
    ("GET", "/v1/openapi.json", openapi, "This document"),
]


#: What a group token (a blade) may call; each handler holds the LU, client or copy job it
#: names to the group's access (``_permit``, ``_own_client``, ``_own_job``). Creating,
#: growing and deleting LUs, scrub, cache hold, faults and devices stay with the control and
#: admin tokens (the operator, the terminal, ``nasblade up``).
GROUP_ROUTES: frozenset[Handler] = frozenset({
    get_array, list_lus, get_lu, post_reservation, get_reservation, delete_reservation, compare_and_write,
    list_clients, get_client, post_client, delete_client, get_cache, get_cache_directory, post_cache_records,
    delete_cache_records, get_cache_hold, get_load, get_metrics, post_copy_job, list_copy_jobs, get_copy_job,
    delete_copy_job, get_scrub, openapi,
})

#: What the csi token (the CSI driver's controller plugin) may call: what ``nasblade_csi``'s
#: ``Array`` and ``Catalog`` do through ``apiclient.ControlClient`` -- ``array()``
#: (capacity), ``get_lu``/``list_lus``, ``create_lu``, ``update_lu`` (grow, read-only),
#: ``delete_lu``, ``compare_and_write`` (the catalog), the copy jobs (snapshots, clones) --
#: and ``load()`` and the OpenAPI document. Each handler holds the LUs it names to the CSI
#: driver's (``_permit``: ``lunames.is_csi_lu``) and its copy jobs to those between them
#: (``_own_job``). Reservations, clients, cache records, metrics, scrub, faults and devices
#: stay with the others.
CSI_ROUTES: frozenset[Handler] = frozenset({
    get_array, list_lus, get_lu, create_lu, patch_lu, delete_lu, compare_and_write,
    post_copy_job, list_copy_jobs, get_copy_job, delete_copy_job, get_load, openapi,
})


_EXTENT_SCHEMA: dict[str, Any] = {
    "type": "object", "required": ["device", "offset", "length", "segment"],
    "description": "One contiguous run of an LU on one device (the LU's data is striped over "
                   "the runs of a segment in stripe units).",
    "properties": {"device": {"type": "integer", "description": "device index"},
                   "offset": {"type": "integer", "description": "byte offset on the device"},
                   "length": {"type": "integer", "description": "bytes"},
                   "segment": {"type": "integer", "description": "index of the segment (one per grow)"}},
}
_LU_SCHEMA: dict[str, Any] = {
    "type": "object", "required": ["name", "size", "allocated", "devices", "extents"],
    "properties": {"name": {"type": "string"}, "size": {"type": "integer"}, "readOnly": {"type": "boolean"},
                   "created": {"type": "string"}, "allocated": {"type": "integer"},
                   "devices": {"type": "array", "items": {"type": "integer"}},
                   "extents": {"type": "array", "items": {"$ref": "#/components/schemas/Extent"}},
                   "reservation": {"type": ["object", "null"]}, "lastEpoch": {"type": "integer"},
                   "connections": {"type": "integer"}},
}
_LU_REF = {"$ref": "#/components/schemas/LU"}
#: Response schemas of the routes that answer with a documented shape (others: ``object``).
_RESPONSES: dict[str, dict[str, Any]] = {
    "list_lus": {"type": "object", "properties": {"lus": {"type": "array", "items": _LU_REF}}},
    "get_lu": _LU_REF, "create_lu": _LU_REF, "patch_lu": _LU_REF,
}
_INT = {"type": "integer", "minimum": 0}
_STR = {"type": "string"}
_NAME = {"type": "string", "minLength": 1}
_LU_NAME = {"type": "string", "pattern": luname.PATTERN}
#: 1 to ``CAS_MAX`` bytes, base64 (what ``compare_and_write`` accepts)
_BASE64 = {"type": "string", "contentEncoding": "base64", "minLength": 4, "maxLength": 4 * (-(-CAS_MAX // 3)),
           "pattern": r"^(?:[A-Za-z0-9+/]{4})*(?:[A-Za-z0-9+/]{2}==|[A-Za-z0-9+/]{3}=|[A-Za-z0-9+/]{4})$"}


def _obj(required: list[str], **props: dict[str, Any]) -> dict[str, Any]:
    return {"type": "object", "required": required, "properties": props}


#: Request body schemas (the fields each handler reads with ``_field``).
_REQUESTS: dict[str, dict[str, Any]] = {
    "create_lu": _obj(["name", "size"], name=_LU_NAME, size={"type": "integer", "minimum": 1},
                      readOnly={"type": "boolean"}),
    "patch_lu": _obj([], size=_INT, readOnly={"type": "boolean"}),
    "post_reservation": _obj(["holder"], holder={"type": "string", "pattern": "^[^;=]+$"},
                             epoch={"type": "integer", "minimum": 1}),
    "compare_and_write": _obj(["compareOffset", "compareLength", "expectSha256", "writeOffset", "data"],
                              compareOffset=_INT, compareLength={"type": "integer", "minimum": 0, "maximum": CAS_MAX},
                              expectSha256=_STR, writeOffset=_INT, data=_BASE64),
    "post_client": _obj(["name"], name=_NAME, group=_STR, role=_STR, address=_STR, attrs={"type": "object"}),
    "post_cache_records": _obj(["client", "lu", "ranges"], client=_STR, lu=_NAME,
                               ranges={"type": "array", "items": {"type": "array", "items": _INT,
                                                                  "minItems": 2, "maxItems": 2}},
                               state={"enum": ["dirty", "clean"]}),
    "post_cache_hold": _obj(["hold"], hold={"type": "boolean"}),
    "post_copy_job": _obj(["source", "target", "length"], source=_STR, target=_STR, length=_INT,
                          sourceOffset=_INT, targetOffset=_INT, rateLimit=_INT),
    "post_fault": _obj(["lu"], lu=_NAME, offset=_INT, length=_INT,
                       ops={"type": "array", "minItems": 1, "items": {"enum": ["read", "write"]}}),
    "post_device_fault": _obj(["device"], device=_INT, offset=_INT, length=_INT,
                              ops={"type": "array", "minItems": 1, "items": {"enum": ["read", "write"]}}),
    "post_device_replace": _obj([], path={"type": "string", "minLength": 1}),
    "post_device_fail": _obj([], reason=_STR),
    "post_scrub": {"type": "object"},
}
#: Query parameters: name → required.
_QUERIES: dict[str, dict[str, bool]] = {
    "get_cache_directory": {"lu": True},
    "delete_cache_records": {"client": True, "lu": False},
}
_CREATED = {"create_lu", "post_client", "post_cache_records", "post_copy_job", "post_fault",
            "post_device_fault"}
#: Statuses a route documents beyond the generic ``4XX``: the array has no room (``409`` with
#: ``"reason": "NoSpace"``, beside the route's other conflicts), a device failed (``503``).
_DECLARED_ERRORS: dict[str, dict[str, str]] = {
    "create_lu": {"409": f"the LU exists, or no space on the devices (reason {NO_SPACE})"},
    "patch_lu": {"409": f"a shrink, or no space on the devices (reason {NO_SPACE})"},
    "compare_and_write": {"503": "I/O error on the LU"},
}


def _openapi() -> dict[str, Any]:
    paths: dict[str, dict[str, Any]] = {}
    error = {"content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}}}
    for method, path, handler, summary in ROUTES:
        op_id = handler.__name__
        params: list[dict[str, Any]] = [
            {"name": p, "in": "path", "required": True,
             "schema": _LU_NAME if path.startswith("/v1/lus/") and p == "name" else _STR}
            for p in ("name", "id") if "{" + p + "}" in path]
        params += [{"name": q, "in": "query", "required": req, "schema": _NAME}
                   for q, req in _QUERIES.get(op_id, {}).items()]
        ok = {"description": "OK", "content": {"application/json": {"schema": _RESPONSES.get(op_id, {"type": "object"})}}}
        if op_id == "get_metrics":
            ok = {"description": "OK", "content": {"text/plain": {"schema": {"type": "string"}}}}
        if method == "DELETE" and op_id not in ("delete_copy_job",):
            responses: dict[str, Any] = {"204": {"description": "Done"}}
        else:
            responses = {"201" if op_id in _CREATED else "200": ok}
        responses["4XX"] = {"description": "Error", **error}
        for status, what in _DECLARED_ERRORS.get(op_id, {}).items():
            responses[status] = {"description": what, **error}
        op: dict[str, Any] = {"operationId": op_id, "summary": summary, "parameters": params, "responses": responses}
        if method in ("POST", "PATCH"):
            op["requestBody"] = {"required": True, "content": {"application/json": {
                "schema": _REQUESTS.get(op_id, {"type": "object"})}}}
        paths.setdefault(path, {})[method.lower()] = op
    return {
        "openapi": "3.1.0",
        "info": {"title": "nasblade controller control API", "version": "1",
                 "description": "See docs/control-api.md for the JSON shapes."},
        "security": [{"bearer": []}],
        "components": {
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}},
            "schemas": {"Error": {"type": "object", "required": ["error"],
                                  "properties": {"error": {"type": "string"},
                                                 "reason": {"type": "string", "description":
                                                            f"machine-readable cause ({NO_SPACE})"}}},
                        "LU": _LU_SCHEMA, "Extent": _EXTENT_SCHEMA},
        },
        "paths": paths,
    }


OPENAPI = _openapi()


def build_app(engine: Engine, copies: CopyEngine, *, token: str | None, admin_token: str | None,
              maintenance: Maintenance | None = None, metrics_token: str | None = None,
              faults: bool = False, access_file: access.AccessFile | None = None) -> web.Application:
    """The control API; ``access_file`` says which LUs group tokens reach (none: only the
    shared LUs)."""
    app = web.Application(middlewares=[auth_middleware, error_middleware], client_max_size=1 << 20)
    app[ENGINE] = engine
    app[MAINT] = maintenance or Maintenance(engine)
    app[COPIES] = copies
    app[TOKENS] = (token, admin_token, metrics_token)
    app[FAULTS] = faults
    app[ACCESS] = access_file or access.AccessFile(None)
    app.router.add_get("/healthz", healthz)
    for method, path, handler, _ in ROUTES:
        app.router.add_route(method, path, handler)
    return app


def dumps(obj: Any) -> str:
    return json.dumps(obj, sort_keys=True)
