"""HTTP routes of the cluster-group features, mounted on the blade's two aiohttp applications
(``nasblade.bladeapi.server``) by ``install``.

Blade management API (bearer token, for the operator and ``nasblade cluster``); all under
``/v1/cluster`` so they sit beside the block processor's own low-level routes
(``/v1/filesystems/{fs}/takeover|release``, ``/v1/backups``)::

    GET  /v1/cluster                              members, liveness, ownership, active area,
                                                  takeover history, backup scheduler
    GET  /v1/cluster/check-takeover               per file system: possible now? why not?
    POST /v1/cluster/filesystems/{fs}/takeover    {"force": false}: take fs over (graceful: a
                                                  live owner releases first; force: fence it)
    POST /v1/cluster/filesystems/{fs}/release     commit, unmount, flush, keep the record: it
                                                  stays unserved until a blade takes it over
    POST /v1/cluster/giveback                     take back every file system homed here
    POST /v1/cluster/backups                      {"crossGroup": ["g2"] | true, "rateLimit": 0}:
                                                  back up now (rateLimit bytes/s, 0 = unlimited)
    GET  /v1/cluster/backups                      backup history (group record) + scheduler
    GET  /v1/cluster/area                         {"activeArea": "primary"|"backup", "events"}
    POST /v1/cluster/area/reform                  copy the backup area into the portion and
                                                  switch back to it

Errors are ``{"error": message}`` with 400/404/409/503 like the rest of the blade API. Bodies
are read by ``nasblade.httpjson.read`` (optional here: no body means ``{}``); its ``BodyError``
becomes 400/413 in the blade app's error middleware (``nasblade.bladeapi.server``).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

from aiohttp import web

from nasblade import httpjson
from nasblade.cluster.member import ClusterError, ClusterMember
from nasblade.controller.apiclient import ControlAPIError

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
MEMBER_KEY: web.AppKey[ClusterMember] = web.AppKey("cluster_member", ClusterMember)


def _m(request: web.Request) -> ClusterMember:
    return request.app[MEMBER_KEY]


def _error(status: int, message: str) -> web.Response:
    return web.json_response({"error": message}, status=status)


def _guarded(fn: Callable[[web.Request], Awaitable[Any]]) -> Handler:
    async def handler(request: web.Request) -> web.StreamResponse:
        try:
            return web.json_response(await fn(request))
        except ClusterError as exc:
            return _error(exc.status, str(exc))
        except ControlAPIError as exc:
            return _error(409 if exc.status < 500 else 503, f"the controller refused: {exc.message}")
        except OSError as exc:
            return _error(503, f"{type(exc).__name__}: {exc}")

    return handler


async def _cluster(request: web.Request) -> Any:
    return _m(request).status()


async def _check(request: web.Request) -> Any:
    m = _m(request)
    return {"blade": m.me, "group": m.cfg.group, "fileSystems": await m.check_all()}


async def _takeover(request: web.Request) -> Any:
    body = await httpjson.read(request, optional=True)
    force = body.get("force", False)
    if not isinstance(force, bool):
        raise ClusterError("force: must be true or false", status=400)
    return await _m(request).manual_takeover(request.match_info["fs"], force=force)


async def _release(request: web.Request) -> Any:
    body = await httpjson.read(request, optional=True)
    taker = body.get("for")
    if taker is not None and not isinstance(taker, str):
        raise ClusterError("for: the name of the blade the file system is released to", status=400)
    return await _m(request).release(request.match_info["fs"], taker=taker)


async def _giveback(request: web.Request) -> Any:
    return {"takeovers": await _m(request).giveback()}


async def _backup_now(request: web.Request) -> Any:
    m = _m(request)
    body = await httpjson.read(request, optional=True)
    cross = body.get("crossGroup", [])
    if cross is True:
        cross = [c.group for c in m.cfg.cross_group]
    elif cross is False:
        cross = []
    if not isinstance(cross, list) or not all(isinstance(c, str) for c in cross):
        raise ClusterError("crossGroup: must be true, false or a list of cluster group names", status=400)
    rate = body.get("rateLimit", 0)
    if isinstance(rate, bool) or not isinstance(rate, int) or rate < 0:
        raise ClusterError("rateLimit: bytes per second, an integer >= 0 (0: unlimited)", status=400)
    records = await m.backup(trigger="on-demand", cross_group=cross, rate=rate)
    return {"backups": records}


async def _history(request: web.Request) -> Any:
    m = _m(request)
    return {"group": m.cfg.group, "activeArea": m.active_area, "backups": m.history(),
            "scheduler": m.status()["backup"]}


async def _area(request: web.Request) -> Any:
    m = _m(request)
    return {"activeArea": m.active_area, "events": list(m.area_events)}


async def _reform(request: web.Request) -> Any:
    return await _m(request).reform()


BLADE_ROUTES: list[tuple[str, str, Handler]] = [
    ("GET", "/v1/cluster", _guarded(_cluster)),
    ("GET", "/v1/cluster/check-takeover", _guarded(_check)),
    ("POST", "/v1/cluster/filesystems/{fs}/takeover", _guarded(_takeover)),
    ("POST", "/v1/cluster/filesystems/{fs}/release", _guarded(_release)),
    ("POST", "/v1/cluster/giveback", _guarded(_giveback)),
    ("POST", "/v1/cluster/backups", _guarded(_backup_now)),
    ("GET", "/v1/cluster/backups", _guarded(_history)),
    ("GET", "/v1/cluster/area", _guarded(_area)),
    ("POST", "/v1/cluster/area/reform", _guarded(_reform)),
]


def install(app: web.Application, member: ClusterMember) -> None:
    """Add the cluster routes to the blade management app (before it is started)."""
    app[MEMBER_KEY] = member
    for method, path, handler in BLADE_ROUTES:
        app.router.add_route(method, path, handler)
