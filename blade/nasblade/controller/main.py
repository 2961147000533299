"""``nasblade controller``: run the storage controller (NBD + control API) in one process.

Reads the device list, listen addresses, tokens and cache size from flags, an optional
YAML/JSON ``--config`` (same keys, flags win) and ``NASBLADE_TOKEN`` /
``NASBLADE_ADMIN_TOKEN``; opens the ``array.Array``; starts the NBD server
(``nasblade.controller.nbdserver``), the control API (``api``), the background destager and the copy
engine; prints the ready line (``nasblade.ready``). SIGTERM/SIGINT destage the cache, fsync
the devices and exit 0.

``--tls-dir DIR`` (``ca-cert.pem``, ``server-cert.pem``, ``server-key.pem``; a mounted Secret)
makes the NBD TCP listener require TLS with a CA-signed client certificate, and
``--nbd-access FILE`` names the file that says which LUs each client identity may open
(``nasblade.nbd.access``). Without ``--tls-dir`` NBD is plaintext and open to every client:
the switch for benchmarks and tests, never for a deployment (the operator and ``nasblade up``
always pass it unless told otherwise). ``--api-tls`` serves the control API over HTTPS with the
same server certificate (bearer tokens then never cross the network in clear; no client
certificate is asked for there): the operator passes it, ``nasblade up`` keeps its API on
loopback and plain HTTP. Renewed certificate files are picked up at the next handshake.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import logging
import os
import signal
from pathlib import Path
from typing import Any

import yaml
from aiohttp import web

from nasblade import eventloop, ready, tls, units
from nasblade.controller import api, copyengine, layout, maintenance, nbdserver, redundancy
from nasblade.controller.array import Array
from nasblade.controller.engine import Engine
from nasblade.nbd import access

log = logging.getLogger("nasblade.controller")



def parse_size(text: str) -> int:
    """A size flag or config value (``nasblade.units``: 512M, 1Gi, 1G, 4096)."""
    try:
        return units.parse_size(text)
    except units.UnitError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def parse_device(text: str) -> tuple[str, int | None]:
    """``PATH[:SIZE]``: a device path and, when the part after the last colon is a size, its size."""
    path, sep, size = text.rpartition(":")
    if sep and path:
        try:
            return path, units.parse_size(size)
        except units.UnitError:
            pass
    return text, None


def parse_hostport(text: str) -> tuple[str, int]:
    host, sep, port = text.rpartition(":")
    if not sep or not (port.isascii() and port.isdigit()):
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
    parser.add_argument("--metrics-token-file",
                        help="file holding the read-only metrics token: GET /v1/metrics only (or NASBLADE_METRICS_TOKEN)")
    parser.add_argument("--faults", action="store_true", default=None,
                        help="turn on fault injection (POST /v1/faults, admin token): for tests, never in production")
    parser.add_argument("--tls-dir", metavar="DIR",
                        help="NBD over TLS: DIR holds ca-cert.pem, server-cert.pem, server-key.pem; "
                             "clients need a certificate from that CA")
    parser.add_argument("--api-tls", action="store_true", default=None,
                        help="serve the control API over HTTPS with --tls-dir's server certificate")
    parser.add_argument("--nbd-access", metavar="FILE",
                        help="JSON file: which LUs each client certificate identity may open")
    parser.add_argument("--cache-size", help="cache memory size (default 256M)")
    parser.add_argument("--protection", help="protection level of a new array: none (default), "
                        "mirror, mirror-2, mirror-3, parity-1 (RAID 5 style, >= 3 devices), parity-2 "
                        "(RAID 6 style, >= 4 devices); an existing array keeps its own")
    parser.add_argument("--rebuild-rate", help="rebuild speed limit per second (default 256M)")
    parser.add_argument("--scrub-rate", help="scrub speed limit per second (default 64M)")
    parser.add_argument("--busy-rate", help="rebuild/scrub limit while clients do I/O (default 16M)")
    parser.add_argument("--scrub-interval", help="seconds between background scrubs (default 168h; 0: on demand)")
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
    for key in ("nbd-listen", "nbd-unix", "api-listen", "token-file", "admin-token-file", "cache-size",
                "tls-dir", "nbd-access", "protection", "rebuild-rate", "scrub-rate", "busy-rate",
                "scrub-interval", "api-tls", "metrics-token-file", "faults"):
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
    try:
        admin = _token(conf, "admin-token-file", "NASBLADE_ADMIN_TOKEN")
    except FileNotFoundError as exc:  # e.g. an array's token Secret made before it had an admin key
        logging.getLogger(__name__).warning("no admin token (%s): the admin routes answer 403", exc)
        admin = None
    if token is None and admin is None:
        raise SystemExit("nasblade controller: a token is required (--token-file or NASBLADE_TOKEN)")
    try:
        array = Array.open([parse_device(str(d)) for d in conf["device"]], conf.get("protection"))
    except (layout.LayoutError, redundancy.ProtectionError) as exc:
        raise SystemExit(f"nasblade controller: {exc}") from exc
    cache_size = parse_size(str(conf.get("cache-size", "256M")))
    engine = Engine(array, cache_size=cache_size)
    try:
        metrics = _token(conf, "metrics-token-file", "NASBLADE_METRICS_TOKEN")
    except FileNotFoundError as exc:  # a token Secret made before it had a metrics key
        logging.getLogger(__name__).warning("no metrics token (%s): scrapers need the user token", exc)
        metrics = None
    return eventloop.run(_serve(engine, conf, token=token, admin=admin, metrics=metrics))


async def _serve(engine: Engine, conf: dict[str, Any], *, token: str | None, admin: str | None,
                 metrics: str | None = None) -> int:
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    copies = copyengine.CopyEngine(engine)
    copies.recover()
    nbd_host, nbd_port = parse_hostport(str(conf.get("nbd-listen", "127.0.0.1:10809")))
    api_host, api_port = parse_hostport(str(conf.get("api-listen", "127.0.0.1:8080")))
    nbd_tls = None
    if conf.get("api-tls") and not conf.get("tls-dir"):
        raise SystemExit("nasblade controller: --api-tls needs --tls-dir (the server certificate)")
    if conf.get("tls-dir"):
        nbd_tls = nbdserver.ServerTLS(tls.server_context(str(conf["tls-dir"])),
                                      access.AccessFile(conf.get("nbd-access")))
    nbd = await nbdserver.serve_tcp(engine, nbd_host, nbd_port, nbd_tls)
    unix = await nbdserver.serve_unix(engine, conf["nbd-unix"]) if conf.get("nbd-unix") else None
    upkeep = maintenance.Maintenance(
        engine, rebuild_rate=parse_size(str(conf.get("rebuild-rate", "256M"))),
        scrub_rate=parse_size(str(conf.get("scrub-rate", "64M"))),
        busy_rate=parse_size(str(conf.get("busy-rate", "16M"))),
        scrub_interval=units.parse_duration(str(conf.get("scrub-interval", "168h"))))
    if conf.get("faults"):
        log.warning("fault injection is ON (--faults): the admin token can make LUs fail")
    app = api.build_app(engine, copies, token=token, admin_token=admin, maintenance=upkeep,
                        metrics_token=metrics, faults=bool(conf.get("faults")),
                        access_file=access.AccessFile(conf.get("nbd-access")))
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    api_tls = tls.server_context(str(conf["tls-dir"]), client_auth=False) if conf.get("api-tls") else None
    site = web.TCPSite(runner, api_host, api_port, ssl_context=api_tls)
    await site.start()
    nbd_addr = nbd.sockets[0].getsockname()
    api_addr = site._server.sockets[0].getsockname()  # type: ignore[union-attr]
    destager = loop.create_task(engine.destager())
    upkeep_task = loop.create_task(upkeep.run())
    endpoints: dict[str, Any] = {"nbd": f"{nbd_addr[0]}:{nbd_addr[1]}",
                                 "api": f"{'https' if api_tls else 'http'}://{api_addr[0]}:{api_addr[1]}"}
    if unix is not None:
        endpoints["nbdUnix"] = conf["nbd-unix"]
    ready.announce("controller", endpoints, nbdTLS=nbd_tls is not None, apiTLS=api_tls is not None)
    await stop.wait()
    log.info("stopping: destaging the cache")
    nbd.close()
    if unix is not None:
        unix.close()
    await copies.shutdown()
    upkeep_task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await upkeep_task
    destager.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await destager
    await engine.flush()
    await runner.cleanup()
    engine.array.close()
    return 0
