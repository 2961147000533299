"""``nasblade mkfs`` and ``nasblade fsck``: create and check a file system on a device.

Both take a device URL (``nbd://HOST:PORT/LU``, ``nbd+unix:///LU?socket=PATH`` or a path).
``mkfs`` refuses a device that already holds a nasblade file system unless ``--force``.
``fsck`` mounts (recovering the WAL), runs ``nasblade.fs.fsck.check`` and prints a JSON
report; exit status 0 = clean, 4 = inconsistencies found, 8 = could not check.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import sys

from nasblade import devices
from nasblade.fs import fs as fsmod
from nasblade.fs import fsck, layout

log = logging.getLogger(__name__)


def add_mkfs_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("device", help="device URL or path")
    parser.add_argument("--force", action="store_true", help="overwrite an existing file system")


def run_mkfs(args: argparse.Namespace) -> int:
    dev = devices.open_device(args.device)
    try:
        if not args.force:
            try:
                layout.read_superblock(dev)
            except layout.LayoutError:
                pass
            else:
                log.error("%s already holds a nasblade file system (use --force)", args.device)
                return 1
        sb = fsmod.mkfs(dev)
        sys.stdout.write(
            json.dumps({"device": args.device, "uuid": sb.uuid.hex(), "fsid": sb.fsid, "dataBlocks": sb.data_blocks})
            + "\n"
        )
        return 0
    finally:
        dev.close()


def add_fsck_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("device", help="device URL or path")


def run_fsck(args: argparse.Namespace) -> int:
    try:
        dev = devices.open_device(args.device)
    except (OSError, ValueError) as exc:
        log.error("cannot open %s: %s", args.device, exc)
        return 8
    try:
        rep = fsck.check(dev)
    except (layout.LayoutError, OSError) as exc:
        log.error("cannot check %s: %s", args.device, exc)
        return 8
    finally:
        dev.close()
    out = dataclasses.asdict(rep)
    out["clean"] = rep.clean
    sys.stdout.write(json.dumps(out) + "\n")
    return 0 if rep.clean else 4
