"""``nasblade blade-file-processor``: the blade's file processor, as the boot shim runs it.

This is the program inside the blade software bundle: it embeds the file processor
(``nasblade.fileproc.server.FileProcessor``) for the file systems the blade owns, and every
``--heartbeat-interval`` asks its block processor, through the local API
(``nasblade.bladeapi.client.LocalClient``), to store its processing status in the blade's
slot of the cluster group's portion (claim 2): heartbeat time and counter, owned file systems,
exports with their addresses and NFS write verifiers, NFS client count and software version
(``NASBLADE_SOFTWARE_VERSION``, set by the boot shim). It also reads the controller load the
block processor hands it, and reports it with its status.

    nasblade blade-file-processor --blade B --local-unix PATH --heartbeat-interval 0.2 \\
        --fs '{"name": "fs1", "device": "nbd+unix:///fs-fs1?socket=…", "address": "127.0.0.2",
               "nfsPort": 2049, "mountPort": 20048, "portmapPort": 111,
               "exports": [{"path": "/fs1", "clients": ["127.0.0.0/8"], "access": "rw"}]}'

Ready line endpoints: ``{"<fs>": {"nfs": "H:P", "mount": "H:P", "portmap": "H:P"}}``.
With ``--control-unix PATH`` it also serves its block processor (takeover / release)::

    GET    /v1/filesystems          what is served (FileProcessor.status())
    POST   /v1/filesystems          body: the --fs JSON; mount (recover) and listen; idempotent
    DELETE /v1/filesystems/{name}   stop listening, commit, unmount
    PUT    /v1/filesystems/{name}/exports  body {"exports": [...]}: change them in place
    GET    /v1/filesystems/{name}/directories        directory volumes: quota, usage, files; the space
    PUT    /v1/filesystems/{name}/directories/{dir}  body {"quotaBytes": N, "mode": 511}: made or resized
                                                     ("source": {"snapshot": S} or {"directory": D}
                                                     fills a new one with a copy of it)
    DELETE /v1/filesystems/{name}/directories/{dir}  the directory volume and its data deleted
    GET    /v1/filesystems/{name}/snapshots          snapshots of its directory volumes
    PUT    /v1/filesystems/{name}/snapshots/{snap}   body {"directory": D}: snapshot of D made
    DELETE /v1/filesystems/{name}/snapshots/{snap}   the snapshot deleted
    PUT    /v1/filesystems/{name}/listen   body {"address", "nfsPort", "mountPort", "portmapPort",
                                    "advertise"}: new listeners in place (connections stay)
    GET    /v1/calls                RPC calls per file system, program and procedure, with
                                    their latency buckets (FileProcessor.call_stats()), for
                                    the blade's metrics (nasblade.blockproc.metrics)

SIGTERM: a last status with ``state: stopped``, then the file systems are committed and
unmounted.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import logging
import os
import signal
import sys
import time
from collections.abc import Awaitable, Callable
from typing import Any

from aiohttp import web

from nasblade import eventloop, ready
from nasblade.bladeapi import lifeline
from nasblade.bladeapi.client import BladeAPIError, LocalClient
from nasblade.fileproc.failstop import DeviceLost, SelfFence, fail_stop_open
from nasblade.program import bundle
from nasblade.units import parse_size

log = logging.getLogger(__name__)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--blade", required=True)
    parser.add_argument("--local-unix", required=True, help="the block processor's local API socket")
    parser.add_argument("--heartbeat-interval", type=float, default=0.2)
    parser.add_argument("--commit-interval", type=float, default=1.0)
    parser.add_argument("--read-cache", default="128M",
                        help="file data kept in memory by this file processor, all its file systems together "
                             "(0: none; nasblade.fs.datacache)")
    parser.add_argument("--fs", action="append", default=[], help="file system to serve (JSON, repeatable)")
    parser.add_argument("--control-unix", help="Unix socket for the block processor to add/remove file systems")
    parser.add_argument("--fence-after", type=float, default=None,
                        help="stop serving when the block processor is unreachable this long (default 5 heartbeats)")


def fs_spec(raw: dict[str, Any]) -> Any:
    """Translate the blade's file-system JSON into the file processor's ``FsSpec``."""
    from nasblade.fileproc import config as fpconfig

    return fpconfig.parse_fs(
        {"fsName": raw["name"], "device": raw["device"], "exports": raw["exports"], "listen": _listen(raw)},
        f"--fs {raw.get('name')}",
    )


def _listen(raw: dict[str, Any]) -> dict[str, Any]:
    """The file processor's ``listen`` mapping from the blade's file-system JSON."""
    return {"host": raw["address"], "nfsPort": raw.get("nfsPort", 2049), "mountPort": raw.get("mountPort", 20048),
            "portmapPort": raw.get("portmapPort", 111),
            **({"advertise": raw["advertise"]} if raw.get("advertise") is not None else {})}


class Agent:
    def __init__(self, *, blade: str, local: LocalClient, fp: Any, interval: float) -> None:
        self.blade = blade
        self.local = local
        self.fp = fp
        self.interval = interval
        self.counter = 0
        self.version = os.environ.get("NASBLADE_SOFTWARE_VERSION") or bundle.running_version()
        self.fence = SelfFence(fp, fence_after=5 * interval)

    def status(self, state: str = "running") -> dict[str, Any]:
        self.counter += 1
        fs_status = self.fp.status()
        exports = []
        for name, st in sorted(fs_status.items()):
            for path in st["exports"]:
                exports.append({"fileSystem": name, "path": path, **st["endpoints"],
                                "writeVerifier": st["writeVerifier"], "failed": st["failed"]})
        clients = sum(len(ep.conns) for ep in self.fp.endpoints.values())
        first = next(iter(sorted(fs_status.items())), None)
        return {
            "heartbeat": {"time": time.time(), "counter": self.counter},
            "state": state,
            # a failed one (its commit failed) is not served: the block processor gives the blade up
            "fileSystems": sorted(n for n, st in fs_status.items() if not st["failed"]),
            "exports": exports,
            "writeVerifier": first[1]["writeVerifier"] if first else "",
            "softwareVersion": self.version,
            "clients": clients,
        }

    async def beat(self, state: str = "running") -> None:
        try:
            await asyncio.to_thread(self.local.store_status, self.status(state))
            self.fence.ok()
        except OSError as exc:  # the block processor is not there at all (cluster groups: self-fence)
            log.warning("heartbeat %d not stored: %s", self.counter, exc)
            await self.fence.unreachable(exc)
        except BladeAPIError as exc:
            log.warning("heartbeat %d not stored: %s", self.counter, exc)

    async def run_heartbeats(self) -> None:
        while True:
            await self.beat()
            await asyncio.sleep(self.interval)


FP_KEY: web.AppKey[Any] = web.AppKey("fp", object)


async def _list_fs(request: web.Request) -> web.Response:
    return web.json_response(request.app[FP_KEY].status())


async def _add_fs(request: web.Request) -> web.Response:
    fp = request.app[FP_KEY]
    try:
        raw = await request.json()
        spec = fs_spec(raw)
    except (ValueError, KeyError, TypeError) as exc:
        return web.json_response({"error": f"bad file system: {exc}"}, status=400)
    if spec.name in fp.endpoints:
        return web.json_response({"name": spec.name, "endpoints": fp.status()[spec.name]["endpoints"]})
    try:
        endpoints = await fp.add_filesystem(spec)
    except OSError as exc:
        return web.json_response({"error": f"cannot serve {spec.name}: {exc}"}, status=409)
    return web.json_response({"name": spec.name, "endpoints": endpoints}, status=201)


async def _remove_fs(request: web.Request) -> web.Response:
    fp = request.app[FP_KEY]
    name = request.match_info["name"]
    if name not in fp.endpoints:
        return web.json_response({"error": f"{name} is not served here"}, status=404)
    with contextlib.suppress(DeviceLost):  # its block processor is gone: nothing left to commit to
        await fp.remove_filesystem(name)
    return web.json_response({"name": name, "removed": True})


async def _set_exports(request: web.Request) -> web.Response:
    """``PUT /v1/filesystems/{name}/exports`` ``{"exports": [...]}`` (the --fs JSON's exports):
    the served file system's exports changed in place."""
    from nasblade.fileproc import config as fpconfig

    fp = request.app[FP_KEY]
    name = request.match_info["name"]
    if name not in fp.endpoints:
        return web.json_response({"error": f"{name} is not served here"}, status=404)
    try:
        raw = (await request.json())["exports"]
        if not isinstance(raw, list) or not raw:
            raise ValueError("exports: expected a non-empty list")
        exports = tuple(fpconfig.parse_export(e, f"exports[{i}]") for i, e in enumerate(raw))
        await fp.set_exports(name, exports)
    except (ValueError, KeyError, TypeError, OSError) as exc:
        return web.json_response({"error": f"bad exports for {name}: {exc}"}, status=400)
    return web.json_response({"name": name, "exports": [e.path for e in exports]})


async def _set_listen(request: web.Request) -> web.Response:
    """``PUT /v1/filesystems/{name}/listen`` (the --fs JSON's address, ports and ``advertise``):
    the served file system moved to new listeners in place (``FileProcessor.set_listen``)."""
    from nasblade.fileproc import config as fpconfig

    fp = request.app[FP_KEY]
    name = request.match_info["name"]
    if name not in fp.endpoints:
        return web.json_response({"error": f"{name} is not served here"}, status=404)
    try:
        raw = await request.json()
        if not isinstance(raw, dict):
            raise TypeError("expected a JSON object")
        listen = fpconfig.parse_listen(_listen(raw), "listen")
    except (ValueError, KeyError, TypeError) as exc:
        return web.json_response({"error": f"bad listen for {name}: {exc}"}, status=400)
    try:
        endpoints = await fp.set_listen(name, listen)
    except OSError as exc:
        return web.json_response({"error": f"{name} kept its listeners: {exc}"}, status=409)
    return web.json_response({"name": name, "endpoints": endpoints})


async def _directories(request: web.Request) -> web.Response:
    """``GET /v1/filesystems/{name}/directories``: the directory volumes with quota and usage,
    and the file system's space behind them (``FileProcessor.space``)."""
    fp = request.app[FP_KEY]
    name = request.match_info["name"]
    try:
        return web.json_response({"name": name, "directories": fp.directories(name), "space": fp.space(name)})
    except KeyError:
        return web.json_response({"error": f"{name} is not served here"}, status=404)


async def _answer(name: str, what: str, work: Callable[[], Awaitable[Any]]) -> web.Response:
    """``work``'s result as JSON, or the refusal: 404 when ``name`` is not served here, 400 for
    bad input, 409 for what the file system refuses (a missing source, ENOSPC, a nested quota)."""
    try:
        return web.json_response(await work())
    except KeyError:
        return web.json_response({"error": f"{name} is not served here"}, status=404)
    except (ValueError, TypeError) as exc:
        return web.json_response({"error": f"{what} of {name}: {exc}"}, status=400)
    except OSError as exc:  # FsError included
        reason = exc.strerror if isinstance(exc, FileNotFoundError) else exc
        return web.json_response({"error": f"{what} of {name}: {reason}"}, status=409)


async def _set_directory(request: web.Request) -> web.Response:
    """``PUT /v1/filesystems/{name}/directories/{dir}`` ``{"quotaBytes": N, "mode": 511}``:
    the directory volume made or resized (``FileProcessor.set_directory``)."""
    fp = request.app[FP_KEY]
    name, dirname = request.match_info["name"], request.match_info["dir"]

    async def work() -> Any:
        raw = await request.json()
        if not isinstance(raw, dict):
            raise TypeError("expected a JSON object")
        quota, mode = raw.get("quotaBytes"), raw.get("mode", 0o777)
        if not isinstance(quota, int) or isinstance(quota, bool) or quota < 0:
            raise ValueError(f"quotaBytes: expected a byte count >= 0, got {quota!r}")
        if not isinstance(mode, int) or isinstance(mode, bool) or not 0 <= mode <= 0o7777:
            raise ValueError(f"mode: expected a permission value 0..0o7777, got {mode!r}")
        return await fp.set_directory(name, dirname, quota_bytes=quota, mode=mode, source=_source(raw.get("source")))

    return await _answer(name, f"directory {dirname}", work)


def _source(raw: Any) -> tuple[str, str] | None:
    """A PUT's ``source``: ``{"snapshot": S}`` or ``{"directory": D}``, or none."""
    if raw is None:
        return None
    if not isinstance(raw, dict) or len(raw) != 1 or next(iter(raw)) not in ("snapshot", "directory") \
            or not isinstance(next(iter(raw.values())), str):
        raise ValueError(f'source: expected {{"snapshot": NAME}} or {{"directory": NAME}}, got {raw!r}')
    kind, name = next(iter(raw.items()))
    return str(kind), name


async def _snapshots(request: web.Request) -> web.Response:
    """``GET /v1/filesystems/{name}/snapshots``: the snapshots of its directory volumes."""
    fp = request.app[FP_KEY]
    name = request.match_info["name"]
    try:
        return web.json_response({"name": name, "snapshots": fp.snapshots(name)})
    except KeyError:
        return web.json_response({"error": f"{name} is not served here"}, status=404)


async def _make_snapshot(request: web.Request) -> web.Response:
    """``PUT /v1/filesystems/{name}/snapshots/{snap}`` ``{"directory": D}``: snapshot of
    directory volume ``D`` made (``FileProcessor.snapshot_directory``; idempotent)."""
    fp = request.app[FP_KEY]
    name, snap = request.match_info["name"], request.match_info["snap"]

    async def work() -> Any:
        raw = await request.json()
        if not isinstance(raw, dict) or not isinstance(raw.get("directory"), str):
            raise ValueError('expected {"directory": NAME}')
        return await fp.snapshot_directory(name, raw["directory"], snap)

    return await _answer(name, f"snapshot {snap}", work)


async def _remove(request: web.Request, kind: str, key: str,
                  remove: Callable[[str, str], Awaitable[bool]]) -> web.Response:
    """A DELETE of a directory volume or a snapshot: ``{"name", "removed"}``."""
    name, item = request.match_info["name"], request.match_info[key]

    async def work() -> Any:
        return {"name": item, "removed": await remove(name, item)}

    return await _answer(name, f"{kind} {item}", work)


async def _remove_snapshot(request: web.Request) -> web.Response:
    """``DELETE /v1/filesystems/{name}/snapshots/{snap}``: the snapshot gone."""
    return await _remove(request, "snapshot", "snap", request.app[FP_KEY].remove_snapshot)


async def _remove_directory(request: web.Request) -> web.Response:
    """``DELETE /v1/filesystems/{name}/directories/{dir}``: the directory volume and its data gone."""
    return await _remove(request, "directory", "dir", request.app[FP_KEY].remove_directory)


async def _calls(request: web.Request) -> web.Response:
    return web.json_response(request.app[FP_KEY].call_stats())


def control_app(fp: Any) -> web.Application:
    """The file processor's control API, used by its block processor (takeover/release)."""
    app = web.Application()
    app[FP_KEY] = fp
    app.router.add_get("/v1/filesystems", _list_fs)
    app.router.add_post("/v1/filesystems", _add_fs)
    app.router.add_delete("/v1/filesystems/{name}", _remove_fs)
    app.router.add_put("/v1/filesystems/{name}/exports", _set_exports)
    app.router.add_put("/v1/filesystems/{name}/listen", _set_listen)
    app.router.add_get("/v1/filesystems/{name}/directories", _directories)
    app.router.add_put("/v1/filesystems/{name}/directories/{dir}", _set_directory)
    app.router.add_delete("/v1/filesystems/{name}/directories/{dir}", _remove_directory)
    app.router.add_get("/v1/filesystems/{name}/snapshots", _snapshots)
    app.router.add_put("/v1/filesystems/{name}/snapshots/{snap}", _make_snapshot)
    app.router.add_delete("/v1/filesystems/{name}/snapshots/{snap}", _remove_snapshot)
    app.router.add_get("/v1/calls", _calls)
    return app


async def _main(args: argparse.Namespace) -> int:
    from nasblade.fileproc.server import FileProcessor

    fp = FileProcessor(commit_interval=args.commit_interval, open_device=fail_stop_open,
                       read_cache=parse_size(args.read_cache))
    agent = Agent(blade=args.blade, local=LocalClient(args.local_unix), fp=fp, interval=args.heartbeat_interval)
    if args.fence_after is not None:
        agent.fence.fence_after = args.fence_after
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    endpoints: dict[str, Any] = {}
    runner: web.AppRunner | None = None
    try:
        if args.control_unix:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(args.control_unix)
            runner = web.AppRunner(control_app(fp), access_log=None)
            await runner.setup()
            await web.UnixSite(runner, args.control_unix).start()
            os.chmod(args.control_unix, 0o600)
        # the lifeline first: from here on, this process ending tells the block processor at once
        line = asyncio.create_task(lifeline.hold(lifeline.socket_path(args.local_unix),
                                                 retry=args.heartbeat_interval, stop=stop))
        for raw in args.fs:
            spec = fs_spec(json.loads(raw))
            endpoints[spec.name] = await fp.add_filesystem(spec)
        await agent.beat()
        heartbeats = asyncio.create_task(agent.run_heartbeats())
        ready.announce("blade-file-processor", endpoints, blade=args.blade, software=agent.version)
        await stop.wait()
        heartbeats.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await heartbeats
        await agent.beat("stopped")
        await line
    finally:
        if runner is not None:
            await runner.cleanup()
        await fp.close()
    return 0


def run(args: argparse.Namespace) -> int:
    logging.basicConfig(level=logging.INFO, stream=sys.stderr,
                        format="%(asctime)s blade-file-processor %(levelname)s %(message)s")
    try:
        return eventloop.run(_main(args))
    except (ValueError, KeyError, OSError) as exc:
        sys.stderr.write(f"nasblade blade-file-processor: {exc}\n")
        return 1
