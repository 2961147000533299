"""HTTP routes of the cluster-group features, mounted on the blade's two aiohttp applications
(``nasblade.blockproc.api``) by ``install``.

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
    GET  /v1/cluster/config                       the cluster configuration in use (JSON of
                                                  ``nasblade.cluster.config``)
    PUT  /v1/cluster/config                       a new one: only its fileSystems may differ
                                                  (added ones are served, removed ones released;
                                                  ``ClusterMember.reconfigure``) → {"fileSystems",
                                                  "added", "removed", "changed"}; 409 otherwise

The member's records (``nasblade.cluster.records``) become JSON here and nowhere else on the
way out (``records.to_json``; ``_status`` builds ``GET /v1/cluster`` from the member's parts).
``install`` also adds the member's metrics (``nasblade.cluster.metrics``: backup state of the
group's portion) to the blade's ``GET /v1/metrics``. Errors are ``{"error": message}`` with
400/404/409/503 like the rest of the blade API (a controller's refusal: 409, its 5xx: 503; no
space on the array: 409 with the controller's ``"reason": "NoSpace"``). Bodies are read by
``nasblade.httpjson.read`` (optional here: no body means ``{}``); its ``BodyError`` becomes
400/413 in the blade app's error middleware (``nasblade.blockproc.api``).
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable
from typing import Any

from aiohttp import web

from nasblade import httpjson
from nasblade.blockproc.api import METRICS_EXTRA
from nasblade.cluster.config import ClusterConfigError
from nasblade.cluster.config import parse as parse_config
from nasblade.cluster.member import ClusterMember
from nasblade.cluster.metrics import MemberCollector
from nasblade.cluster.records import ClusterError, to_json
from nasblade.cluster.takeover import TakeoverCheck
from nasblade.controller.apiclient import ControlAPIError

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
MEMBER_KEY: web.AppKey[ClusterMember] = web.AppKey("cluster_member", ClusterMember)


def _m(request: web.Request) -> ClusterMember:
    return request.app[MEMBER_KEY]


def _error(status: int, message: str, **extra: Any) -> web.Response:
    return web.json_response({"error": message, **extra}, status=status)


def _guarded(fn: Callable[[web.Request], Awaitable[Any]]) -> Handler:
    async def handler(request: web.Request) -> web.StreamResponse:
        try:
            return web.json_response(await fn(request))
        except ClusterError as exc:
            return _error(exc.status, str(exc))
        except ControlAPIError as exc:
            if exc.no_space:  # 409 with reason NoSpace (an older controller: 507): the caller acts
                return _error(409, f"the controller refused: {exc.message}", reason=exc.reason)
            return _error(409 if exc.status < 500 else 503, f"the controller refused: {exc.message}")
        except OSError as exc:
            return _error(503, f"{type(exc).__name__}: {exc}")

    return handler


def _backup_status(m: ClusterMember, now: float) -> dict[str, Any]:
    b = m.backups
    return {"running": b.running, "scheduler": b.scheduler.to_json(),
            "lastSuccessAgo": None if b.last_ok is None else now - b.last_ok,
            "policy": m.cfg.to_json()["backup"]}


def _status(m: ClusterMember) -> dict[str, Any]:
    now = time.monotonic()
    view, t = m.view, m.takeovers
    alive = view.alive(now)
    members = []
    for i, b in enumerate(m.cfg.members):
        st = m.bp.last_status if b == m.me else view.slots.get(b)
        members.append({"blade": b, "slot": i, "alive": b in alive, "heartbeatAge": view.liveness.age(b, now=now),
                        "heartbeatCounter": None if st is None else st.heartbeat_counter,
                        "fileSystems": [] if st is None else list(st.file_systems)})
    return {
        "group": m.cfg.group, "blade": m.me, "activeArea": m.areas.active,
        "members": members,
        "ownership": {fs: {"blade": o.blade, "epoch": o.epoch} for fs, o in sorted(view.group.ownership.items())},
        "serving": dict(sorted(t.serving.items())), "released": sorted(t.released),
        "pendingTakeovers": sorted(t.pending), "leader": view.leader(),
        "takeovers": [to_json(e) for e in t.events], "areaEvents": [to_json(e) for e in m.areas.events],
        "backup": _backup_status(m, now),
        "ticks": m.ticks, "tickError": view.tick_error,
    }


def _check_json(c: TakeoverCheck) -> dict[str, Any]:
    out = c.result.to_json()
    if c.unreachable is not None:
        out["possible"] = False
        out["reasons"].append(f"LU {c.lu} is not reachable at the controller: {c.unreachable}")
    else:
        out["reservation"] = c.reservation
    return out


async def _cluster(request: web.Request) -> Any:
    return _status(_m(request))


async def _check(request: web.Request) -> Any:
    m = _m(request)
    return {"blade": m.me, "group": m.cfg.group,
            "fileSystems": [_check_json(c) for c in await m.takeovers.check_all()]}


async def _takeover(request: web.Request) -> Any:
    body = await httpjson.read(request, optional=True)
    force = body.get("force", False)
    if not isinstance(force, bool):
        raise ClusterError("force: must be true or false", status=400)
    return to_json(await _m(request).takeovers.manual_takeover(request.match_info["fs"], force=force))


async def _release(request: web.Request) -> Any:
    body = await httpjson.read(request, optional=True)
    taker = body.get("for")
    if taker is not None and not isinstance(taker, str):
        raise ClusterError("for: the name of the blade the file system is released to", status=400)
    return to_json(await _m(request).takeovers.release(request.match_info["fs"], taker=taker))


async def _giveback(request: web.Request) -> Any:
    return {"takeovers": [to_json(r) for r in await _m(request).takeovers.giveback()]}


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
    records = await m.backups.backup(trigger="on-demand", cross_group=cross, rate=rate)
    return {"backups": [to_json(r) for r in records]}


async def _history(request: web.Request) -> Any:
    m = _m(request)
    return {"group": m.cfg.group, "activeArea": m.areas.active, "backups": list(m.view.group.backups),
            "scheduler": _backup_status(m, time.monotonic())}


async def _area(request: web.Request) -> Any:
    m = _m(request)
    return {"activeArea": m.areas.active, "events": [to_json(e) for e in m.areas.events]}


async def _reform(request: web.Request) -> Any:
    return to_json(await _m(request).areas.reform())


async def _config(request: web.Request) -> Any:
    return _m(request).cfg.to_json()


async def _reconfigure(request: web.Request) -> Any:
    body = await httpjson.read(request)
    try:
        new = parse_config(body)
    except ClusterConfigError as exc:
        raise ClusterError(str(exc), status=400) from exc
    return await _m(request).reconfigure(new)


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
    ("GET", "/v1/cluster/config", _guarded(_config)),
    ("PUT", "/v1/cluster/config", _guarded(_reconfigure)),
]


def install(app: web.Application, member: ClusterMember) -> None:
    """Add the cluster routes to the blade management app (before it is started), and the
    member's figures to its ``GET /v1/metrics`` (``nasblade.cluster.metrics``)."""
    app[MEMBER_KEY] = member
    app[METRICS_EXTRA].append(MemberCollector(member))
    for method, path, handler in BLADE_ROUTES:
        app.router.add_route(method, path, handler)
