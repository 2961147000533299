"""``nasblade block-processor``: run one blade's block processor.

Example (standalone array, blade b0 of group g1)::

    nasblade block-processor --blade b0 --group g1 --group-index 0 --slot 0 \\
        --controller-nbd 127.0.0.1:10809 --controller-api http://127.0.0.1:8080 \\
        --token-file tok --api-token-file blade-tok --api-listen 127.0.0.1:0 \\
        --nbd-unix run/b0/nbd.sock --local-unix run/b0/local.sock \\
        --software-dir run/b0/software --own fs1

Ready line endpoints: ``nbdUnix`` (the file processor's NBD socket; URL
``nbd+unix:///LU?socket=PATH``), ``local`` (the local API socket) and ``api`` (the blade
management API URL, when ``--api-listen`` is given). SIGTERM/SIGINT: flush every LU at the
controller, post the last cache records, exit 0.

``run(args, extend=...)`` takes what runs beside the block processor on the same event loop and
the same management API: ``nasblade block-processor`` is ``nasblade.cluster.role``, which adds
``--cluster-config`` and the cluster member that way (this package does not import it).
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
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any, Protocol

from aiohttp import web

from nasblade import eventloop, grants, lunames, ready, tls, units
from nasblade.bladeapi import lifeline
from nasblade.blockproc import api as http_api
from nasblade.blockproc.core import DEFAULT_CONTROLLER_WAIT, BlockProcessor, Settings
from nasblade.controller.apiclient import ControlClient
from nasblade.controller.asyncclient import AsyncControlClient
from nasblade.procinfo.portion import PortionError
from nasblade.program.catalog import ProgramError

log = logging.getLogger("nasblade.blockproc")


class Extension(Protocol):
    """What runs beside the block processor (the cluster member): started once the management
    API listens (its URL), closed before the block processor."""

    async def start(self, *, api_url: str) -> None: ...

    async def close(self) -> None: ...


Extend = Callable[[BlockProcessor, "AsyncControlClient | None", web.Application, "str | None"], "Extension | None"]
"""``extend(bp, control, management_app, api_token)``: add routes to the management app and
return the extension to run (or ``None``); called only when ``--api-listen`` is given."""


def _hostport(value: str) -> tuple[str, int]:
    host, _, port = value.rpartition(":")
    if not host or not (port.isascii() and port.isdigit()):
        raise argparse.ArgumentTypeError(f"expected HOST:PORT, got {value!r}")
    return host, int(port)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    a = parser.add_argument
    a("--blade", required=True, help="this blade's name (reservation holder, registry name)")
    a("--group", required=True, help="cluster group name")
    a("--group-index", type=int, default=0, help="the group's portion index in the processor-info LU")
    a("--slot", type=int, default=0, help="this blade's slot in the group's portion")
    a("--controller-nbd", type=_hostport, help="controller NBD HOST:PORT")
    a("--controller-nbd-unix", help="controller NBD Unix socket (instead of TCP)")
    a("--controller-api", help="controller control API URL (http://HOST:PORT)")
    a("--token-file", help="controller API token file (default $NASBLADE_TOKEN)")
    a("--connections", type=int, default=2, help="NBD connections per LU to the controller")
    a("--controller-wait", type=units.parse_duration, default=DEFAULT_CONTROLLER_WAIT, metavar="DURATION",
      help="how long I/O waits for a restarting controller before it fails with EIO (the file processor"
      " then gives the file system up for a peer to take over); default %(default)ss")
    a("--procinfo-lu", default=lunames.PROCINFO, help="processor-information LU ('' for none)")
    a("--portion-size", type=units.parse_size, default=1 << 20, help="size of one group portion (default 1M)")
    a("--program-lu", default=lunames.PROGRAM, help="program LU ('' to skip the software fetch)")
    a("--software-dir", type=Path, help="where to install the blade software for the boot shim")
    a("--software-version", help="version to boot (default: the catalog's selected version)")
    a("--lu", action="append", default=[], help="LU the file processor may use, unreserved (repeatable)")
    a("--own", action="append", default=[], help="LU this blade owns: reserve it and serve it (repeatable)")
    a("--fs-spec", action="append", default=[],
      help='file system this blade may serve, JSON {"name", "lu", "address", "nfsPort", "mountPort",'
      ' "portmapPort", "exports"} (repeatable)')
    a("--fp-unix", help="the file processor's control socket (for file-system takeover/release)")
    a("--nbd-unix", required=True, help="Unix socket to serve NBD to the file processor on")
    a("--local-unix", required=True, help="Unix socket for the file processor's local API")
    a("--api-listen", type=_hostport, help="blade management API HOST:PORT")
    a("--api-token-file", help="blade management API token file (default $NASBLADE_BLADE_TOKEN)")
    a("--api-token-sha256-file", help="file with the hex SHA-256 of the token the blade API accepts (instead of"
      " --api-token-file: the blade never holds the token itself; Kubernetes, the operator's token)")
    a("--csi-token-sha256-file", metavar="PATH", help="file with the hex SHA-256 of the CSI driver's token"
      " (nasblade.grants.csi_token): the blade API takes it on the directory-volume and snapshot routes alone;"
      " without this option (or while the file is missing) it takes no CSI token")
    a("--metrics-token-file", help="read-only token for GET /v1/metrics of the blade API (a scraper's;"
      " default $NASBLADE_METRICS_TOKEN)")
    a("--api-tls-dir", metavar="DIR", help="serve the blade API over HTTPS with DIR's server-cert.pem and"
      " server-key.pem (the blade's own certificate; renewed files are read at the next handshake)")


def _read_token(path: str | None, env: str) -> str | None:
    if path:
        return Path(path).read_text().strip()
    return os.environ.get(env)


def _csi_token_sha256(args: argparse.Namespace) -> str | None:
    """The hex SHA-256 of the CSI driver's token (``--csi-token-sha256-file``); ``None``
    without the option, or while its file is missing (logged: no CSI access, the blade still
    serves); ``ValueError`` for a file that holds no hex SHA-256."""
    path: str | None = args.csi_token_sha256_file
    if not path:
        return None
    try:
        digest = Path(path).read_text().strip()
    except FileNotFoundError:
        log.warning("no CSI token digest (%s missing): the blade API takes no CSI token", path)
        return None
    if not re.fullmatch(r"[0-9a-f]{64}", digest):
        raise ValueError(f"{path}: not a hex SHA-256")
    return digest


def _settings(args: argparse.Namespace) -> Settings:
    host, port = args.controller_nbd if args.controller_nbd else (None, None)
    if host is None and not args.controller_nbd_unix:
        raise ValueError("give --controller-nbd HOST:PORT or --controller-nbd-unix PATH")
    return Settings(
        blade=args.blade,
        group=args.group,
        group_index=args.group_index,
        slot=args.slot,
        controller_host=host,
        controller_port=port,
        controller_unix=args.controller_nbd_unix,
        connections=args.connections,
        procinfo_lu=args.procinfo_lu or None,
        portion_size=args.portion_size,
        program_lu=args.program_lu or None,
        software_dir=args.software_dir,
        software_version=args.software_version,
        lus=list(args.lu),
        owned=list(args.own),
        fs_specs=_fs_specs(args.fs_spec),
        fp_unix=args.fp_unix,
        lifeline_unix=lifeline.socket_path(args.local_unix),
        retry_for=args.controller_wait,
    )


def _fs_specs(raw: list[str]) -> dict[str, dict[str, Any]]:
    specs: dict[str, dict[str, Any]] = {}
    for item in raw:
        spec = json.loads(item)
        if not isinstance(spec, dict) or not isinstance(spec.get("name"), str) or not isinstance(spec.get("lu"), str):
            raise ValueError(f"--fs-spec needs a JSON object with name and lu: {item}")
        specs[spec.pop("name")] = spec
    return specs


async def _serve(args: argparse.Namespace, extend: Extend | None) -> int:
    control: AsyncControlClient | None = None
    if args.controller_api:
        token = _read_token(args.token_file, "NASBLADE_TOKEN")
        if not token:
            raise ValueError("the controller API needs --token-file or $NASBLADE_TOKEN")
        # an https:// URL is checked against NASBLADE_NBD_TLS_DIR's CA (``JSONClient``)
        control = AsyncControlClient(ControlClient(args.controller_api, token))
    bp = BlockProcessor(_settings(args), control=control)
    extension: Extension | None = None
    runners: list[web.AppRunner] = []
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    try:
        for path in (args.nbd_unix, args.local_unix):
            with contextlib.suppress(FileNotFoundError):
                os.unlink(path)
        await bp.start(nbd_unix=args.nbd_unix)
        os.chmod(args.nbd_unix, 0o600)
        local = web.AppRunner(http_api.local_app(bp), access_log=None)
        await local.setup()
        runners.append(local)
        await web.UnixSite(local, args.local_unix).start()
        os.chmod(args.local_unix, 0o600)
        endpoints: dict[str, Any] = {"nbdUnix": args.nbd_unix, "local": args.local_unix}
        if args.api_listen:
            # Kubernetes: only the SHA-256 of the operator's token (no blade can drive another);
            # ``nasblade up``: the token itself (blades ask each other to release)
            api_token_sha256 = _read_token(args.api_token_sha256_file, "NASBLADE_BLADE_TOKEN_SHA256")
            api_token = None if api_token_sha256 else _read_token(args.api_token_file, "NASBLADE_BLADE_TOKEN")
            if not api_token and not api_token_sha256:
                raise ValueError("the blade API needs --api-token-file, --api-token-sha256-file or $NASBLADE_BLADE_TOKEN")
            if api_token_sha256 and not re.fullmatch(r"[0-9a-f]{64}", api_token_sha256):
                raise ValueError(f"{args.api_token_sha256_file}: not a hex SHA-256")
            try:
                metrics_token = _read_token(args.metrics_token_file, "NASBLADE_METRICS_TOKEN")
            except FileNotFoundError as exc:
                log.warning("no metrics token (%s): scrapers need the blade token", exc)
                metrics_token = None
            # the group's token, when this blade holds one for the controller, also opens the
            # directory-volume routes (the CSI driver's directory layout)
            group_token = token if args.controller_api and token and token.startswith(grants.PREFIX) else None
            app = http_api.blade_app(bp, token=api_token, metrics_token=metrics_token, token_sha256=api_token_sha256,
                                     volume_token=group_token, csi_token_sha256=_csi_token_sha256(args))
            if extend is not None:
                extension = extend(bp, control, app, api_token)
            api = web.AppRunner(app, access_log=None)
            await api.setup()
            runners.append(api)
            api_tls = tls.server_context(args.api_tls_dir, client_auth=False) if args.api_tls_dir else None
            site = web.TCPSite(api, args.api_listen[0], args.api_listen[1], ssl_context=api_tls)
            await site.start()
            port = int(api.addresses[-1][1])
            endpoints["api"] = f"{'https' if api_tls else 'http'}://{args.api_listen[0]}:{port}"
            if extension is not None:
                await extension.start(api_url=endpoints["api"])
        software = bp.software.version if bp.software else None
        ready.announce("block-processor", endpoints, blade=args.blade, software=software,
                       softwareError=bp.software_error)
        await _until_either(stop, bp.exit_requested)
    finally:
        if extension is not None:
            await extension.close()
        for r in runners:
            await r.cleanup()
        await bp.close()
    if bp.exit_requested.is_set():
        log.error("exiting: blade failed (%s)", bp.failed)
        return 3
    return 0


async def _until_either(*events: asyncio.Event) -> None:
    waits = [asyncio.ensure_future(e.wait()) for e in events]
    try:
        await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for w in waits:
            w.cancel()


def run(args: argparse.Namespace, *, extend: Extend | None = None) -> int:
    logging.basicConfig(level=logging.INFO, stream=sys.stderr,
                        format="%(asctime)s block-processor %(levelname)s %(message)s")
    try:
        return eventloop.run(_serve(args, extend))
    except (ValueError, PortionError, ProgramError, OSError) as exc:
        sys.stderr.write(f"nasblade block-processor: {exc}\n")
        return 1
