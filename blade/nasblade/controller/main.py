"""``nasblade controller``: run the storage controller (NBD + control API) in one process.

Reads the device list, listen addresses, tokens and cache size from flags, an optional
YAML/JSON ``--config`` (same keys, flags win) and ``NASBLADE_TOKEN`` /
``NASBLADE_ADMIN_TOKEN``; opens the ``array.Array``; starts the NBD server
(``nasblade.nbd.server``), the control API (``api``), the background destager and the copy
engine; prints the ready line (``nasblade.ready``). SIGTERM/SIGINT destage the cache, fsync
the devices and exit 0.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import logging
import os
import re
import signal
from pathlib import Path
from typing import Any

import uvloop
import yaml
from aiohttp import web

from nasblade import ready
from nasblade.controller import api, copyengine, layout
from nasblade.controller.array import Array
from nasblade.controller.engine import Engine
from nasblade.nbd import server

log = logging.getLogger("nasblade.controller")

_UNITS = {"": 1, "B": 1, "K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40}


def parse_size(text: str) -> int:
    m = re.fullmatch(r"\s*(\d+)\s*([KMGT]?)(?:I?B)?\s*", text.upper())
    if not m:
        raise argparse.ArgumentTypeError(f"bad size {text!r} (examples: 4096, 512M, 1G)")
    return int(m.group(1)) * _UNITS[m.group(2)]


def parse_device(text: str) -> tuple[str, int | None]:
    path, sep, size = text.rpartition(":")
    if sep and re.fullmatch(r"\d+[KMGTkmgt]?(i?[Bb])?", size):
        return path, parse_size(size)
    return text, None


def parse_hostport(text: str) -> tuple[str, int]:
    host, sep, port = text.rpartition(":")
    if not sep or not port.isdigit():
        raise argparse.ArgumentTypeError(f"expected HOST:PORT, got {text!r}")
    return host.strip("[]") or "127.0.0.1", int(port)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--device", action="append", metavar="PATH[:SIZE]",
                        help="device file or block device (repeatable); SIZE creates a missing file")
    parser.add_argument("--nbd-listen", metavar="HOST:PORT", help="NBD listen address (default 127.0.0.1:10809)")
    parser.add_argument("--nbd-unix", metavar="PATH", help="also serve NBD on this Unix socket")
    parser.add_argument("--api-listen", metavar="HOST:PORT", help="control API address (default 127.0.0.1:8080)")
    parser.add_argument("--token-file", help="file holding the API token (or NASBLADE_TOKEN)")
    parser.add_argument("--admin-token-file", help="file holding the admin token (or NASBLADE_ADMIN_TOKEN)")
    parser.add_argument("--cache-size", help="cache memory size (default 256M)")
    parser.add_argument("--config", help="YAML or JSON file with the same keys as the flags")
    parser.add_argument("--log-level", default="INFO")


def _settings(args: argparse.Namespace) -> dict[str, Any]:
    conf: dict[str, Any] = {}
    if args.config:
        text = Path(args.config).read_text()
        loaded = json.loads(text) if args.config.endswith(".json") else yaml.safe_load(text)
        if not isinstance(loaded, dict):
            raise SystemExit(f"{args.config}: expected a mapping")
        conf = {str(k).replace("_", "-"): v for k, v in loaded.items()}
    for key in ("nbd-listen", "nbd-unix", "api-listen", "token-file", "admin-token-file", "cache-size"):
        value = getattr(args, key.replace("-", "_"))
        if value is not None:
            conf[key] = value
    if args.device:
        conf["device"] = args.device
    devices = conf.get("device") or conf.get("devices")
    if not devices:
        raise SystemExit("nasblade controller: at least one --device is needed")
    conf["device"] = [devices] if isinstance(devices, str) else list(devices)
    return conf


def _token(conf: dict[str, Any], key: str, env: str) -> str | None:
    if conf.get(key):
        return Path(conf[key]).read_text().strip() or None
    return os.environ.get(env) or None


def run(args: argparse.Namespace) -> int:
    logging.basicConfig(level=args.log_level.upper(),
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    conf = _settings(args)
    token = _token(conf, "token-file", "NASBLADE_TOKEN")
    admin = _token(conf, "admin-token-file", "NASBLADE_ADMIN_TOKEN")
    if token is None and admin is None:
        raise SystemExit("nasblade controller: a token is required (--token-file or NASBLADE_TOKEN)")
    try:
        array = Array.open([parse_device(str(d)) for d in conf["device"]])
    except layout.LayoutError as exc:
        raise SystemExit(f"nasblade controller: {exc}") from exc
    cache_size = parse_size(str(conf.get("cache-size", "256M")))
    engine = Engine(array, cache_size=cache_size)
    uvloop.install()  # faster transports: fewer copies per reply, cheaper callbacks
    return asyncio.run(_serve(engine, conf, token=token, admin=admin))


async def _serve(engine: Engine, conf: dict[str, Any], *, token: str | None, admin: str | None) -> int:
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    copies = copyengine.CopyEngine(engine)
    copies.recover()
    nbd_host, nbd_port = parse_hostport(str(conf.get("nbd-listen", "127.0.0.1:10809")))
    api_host, api_port = parse_hostport(str(conf.get("api-listen", "127.0.0.1:8080")))
    nbd = await server.serve_tcp(engine, nbd_host, nbd_port)
    unix = await server.serve_unix(engine, conf["nbd-unix"]) if conf.get("nbd-unix") else None
    app = api.build_app(engine, copies, token=token, admin_token=admin)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, api_host, api_port)
    await site.start()
    nbd_addr = nbd.sockets[0].getsockname()
    api_addr = site._server.sockets[0].getsockname()  # type: ignore[union-attr]
    destager = loop.create_task(engine.destager())
    endpoints: dict[str, Any] = {"nbd": f"{nbd_addr[0]}:{nbd_addr[1]}",
                                 "api": f"http://{api_addr[0]}:{api_addr[1]}"}
    if unix is not None:
        endpoints["nbdUnix"] = conf["nbd-unix"]
    ready.announce("controller", endpoints)
    await stop.wait()
    log.info("stopping: destaging the cache")
    nbd.close()
    if unix is not None:
        unix.close()
    await copies.shutdown()
    destager.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await destager
    await engine.flush()
    await runner.cleanup()
    engine.array.close()
    return 0
