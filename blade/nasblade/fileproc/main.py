"""``nasblade file-processor``: serve one or more file systems over NFSv3.

Either a configuration file (``--config``, format in ``nasblade.fileproc.config``) or the
flags for a single file system::

    nasblade file-processor --fs-name fs1 --device nbd://127.0.0.1:10809/fs1 \\
        --export /fs1 --clients 127.0.0.0/8 --host 127.0.0.1 --nfs-port 0 --mount-port 0 --portmap-port 0

Prints the ready line with the first file system's ``nfs``, ``mount`` and ``portmap``
endpoints and, under ``fileSystems``, every file system's endpoints and write verifier. Runs
until SIGTERM/SIGINT, then commits and unmounts.
"""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import logging
import signal

from nasblade import eventloop, ready
from nasblade.fileproc import config
from nasblade.fileproc.server import DEFAULT_READ_CACHE, FileProcessor
from nasblade.fs.fs import FsError
from nasblade.fs.layout import LayoutError
from nasblade.nfs.exports import Export
from nasblade.units import parse_size

log = logging.getLogger(__name__)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", help="YAML/JSON file with the file systems to serve")
    parser.add_argument("--fs-name", default="fs", help="name of the single file system (without --config)")
    parser.add_argument("--device", help="device URL: nbd://HOST:PORT/LU, nbd+unix:///LU?socket=PATH or a path")
    parser.add_argument("--export", default="/", help="export path clients mount (default /)")
    parser.add_argument("--clients", default="127.0.0.0/8", help="comma-separated CIDR allow-list")
    parser.add_argument("--access", choices=("rw", "ro"), default="rw")
    parser.add_argument("--no-root-squash", action="store_true", help="do not map uid 0 to anonuid")
    parser.add_argument("--all-squash", action="store_true", help="map every uid to anonuid")
    parser.add_argument("--anonuid", type=int, default=65534)
    parser.add_argument("--anongid", type=int, default=65534)
    parser.add_argument("--host", default="127.0.0.1", help="listen address")
    parser.add_argument("--nfs-port", type=int, default=2049)
    parser.add_argument("--mount-port", type=int, default=20048)
    parser.add_argument("--portmap-port", type=int, default=111, help="-1 disables the portmapper")
    parser.add_argument("--commit-interval", type=float, default=1.0, help="seconds between background commits")
    parser.add_argument("--read-cache", default="128M",
                        help="file data kept in memory by this file processor, all its file systems together "
                             "(0: none; nasblade.fs.datacache)")
    parser.add_argument("--log-level", default="WARNING")
    parser.add_argument("--profile", help="write a cProfile of the serving phase (after ready) to this file")


def specs_from_args(args: argparse.Namespace) -> list[config.FsSpec]:
    if args.config:
        return config.load(args.config)
    if not args.device:
        raise config.ConfigError("--device or --config is required")
    export = Export.build(
        args.export,
        [c.strip() for c in args.clients.split(",") if c.strip()],
        access=args.access,
        root_squash=not args.no_root_squash,
        all_squash=args.all_squash,
        anonuid=args.anonuid,
        anongid=args.anongid,
    )
    listen = config.Listen(
        host=args.host,
        nfs_port=args.nfs_port,
        mount_port=args.mount_port,
        portmap_port=None if args.portmap_port < 0 else args.portmap_port,
    )
    return [config.FsSpec(args.fs_name, args.device, (export,), listen)]


async def serve(specs: list[config.FsSpec], *, commit_interval: float, profile: str | None = None,
                read_cache: int = DEFAULT_READ_CACHE) -> int:
    fp = FileProcessor(commit_interval=commit_interval, read_cache=read_cache)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    try:
        first: dict[str, str] = {}
        for spec in specs:
            eps = await fp.add_filesystem(spec)
            first = first or eps
        ready.announce("file-processor", first, fileSystems=fp.status())
        prof = cProfile.Profile() if profile else None
        if prof is not None:
            prof.enable()
        try:
            await stop.wait()
        finally:
            if prof is not None:
                prof.disable()
                prof.dump_stats(str(profile))
    finally:
        await fp.close()
    return 0


def run(args: argparse.Namespace) -> int:
    logging.basicConfig(level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        specs = specs_from_args(args)
    except (config.ConfigError, ValueError) as exc:
        log.error("invalid configuration: %s", exc)
        return 2
    try:
        return eventloop.run(serve(specs, commit_interval=args.commit_interval, profile=args.profile,
                                   read_cache=parse_size(args.read_cache)))
    except (OSError, FsError, LayoutError) as exc:
        log.error("cannot serve: %s", exc)
        return 1
