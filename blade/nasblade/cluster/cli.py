"""``nasblade cluster``: the management terminal's cluster-group commands (claims 10, 17).

Each action is one call of the blade management API (``nasblade.cluster.api``) of the blade
given with ``--api``; the reply is printed as JSON on stdout. Exit status 0 on success, 1 when
the blade refused (its message on stderr), 2 on bad usage::

    nasblade cluster --api http://127.0.0.1:10900 --token-file blade-token status
    nasblade cluster ... check-takeover
    nasblade cluster ... takeover fs1 [--force]
    nasblade cluster ... release fs1
    nasblade cluster ... giveback
    nasblade cluster ... backup [--cross-group g2 ...]
    nasblade cluster ... backups
    nasblade cluster ... area
    nasblade cluster ... reform
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path
from typing import Any

from nasblade.bladeapi.client import BladeAPIError, BladeClient

# action -> (method, path template, takes a file system)
ACTIONS: dict[str, tuple[str, str, bool]] = {
    "status": ("GET", "/v1/cluster", False),
    "check-takeover": ("GET", "/v1/cluster/check-takeover", False),
    "takeover": ("POST", "/v1/cluster/filesystems/{fs}/takeover", True),
    "release": ("POST", "/v1/cluster/filesystems/{fs}/release", True),
    "giveback": ("POST", "/v1/cluster/giveback", False),
    "backup": ("POST", "/v1/cluster/backups", False),
    "backups": ("GET", "/v1/cluster/backups", False),
    "area": ("GET", "/v1/cluster/area", False),
    "reform": ("POST", "/v1/cluster/area/reform", False),
}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--api", required=True, help="the blade management API URL (http://HOST:PORT)")
    parser.add_argument("--token-file", help="blade API token file (default $NASBLADE_BLADE_TOKEN)")
    parser.add_argument("action", choices=sorted(ACTIONS))
    parser.add_argument("fs", nargs="?", help="file system (takeover, release)")
    parser.add_argument("--force", action="store_true", help="takeover: fence a live owner instead of asking it")
    parser.add_argument("--cross-group", action="append", default=[], help="backup: also copy this group's portion")


def _token(args: argparse.Namespace) -> str | None:
    if args.token_file:
        return Path(args.token_file).read_text().strip()
    return os.environ.get("NASBLADE_BLADE_TOKEN")


def run(args: argparse.Namespace) -> int:
    method, path, needs_fs = ACTIONS[args.action]
    token = _token(args)
    if not token:
        sys.stderr.write("nasblade cluster: give --token-file or $NASBLADE_BLADE_TOKEN\n")
        return 2
    if needs_fs and not args.fs:
        sys.stderr.write(f"nasblade cluster {args.action}: name the file system\n")
        return 2
    body: Any = None
    if args.action == "takeover":
        body = {"force": args.force}
    elif args.action == "backup":
        body = {"crossGroup": list(args.cross_group)}
    try:
        result = BladeClient(args.api, token, timeout=180.0)._req(method, path.format(fs=args.fs), body)
    except BladeAPIError as exc:
        sys.stderr.write(f"nasblade cluster {args.action}: {exc}\n")
        return 1
    except OSError as exc:
        sys.stderr.write(f"nasblade cluster: cannot reach {args.api}: {exc}\n")
        return 1
    sys.stdout.write(json.dumps(result, indent=1, sort_keys=True) + "\n")
    return 0
