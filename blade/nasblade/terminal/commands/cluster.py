"""``nasblade cluster``: one call of one blade's cluster-group API, its JSON reply on stdout.

The raw, one-blade tool beside the array-wide commands (``status``, ``takeover``, ``giveback``,
``backup``): each action is one ``BladeClient`` method (``nasblade.bladeapi.client``, the same
calls the terminal's standalone source makes) on the blade given with ``--api``. Exit status 0
on success, 1 when the blade refused (its message on stderr) or cannot be reached, 2 on bad
usage::

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
from collections.abc import Callable
from pathlib import Path
from typing import Any

from nasblade.bladeapi.client import BladeAPIError, BladeClient
from nasblade.terminal.commands import examples

Action = Callable[[BladeClient, argparse.Namespace], dict[str, Any]]

# action -> (the call, takes a file system)
ACTIONS: dict[str, tuple[Action, bool]] = {
    "status": (lambda c, a: c.cluster(), False),
    "check-takeover": (lambda c, a: c.check_takeover(), False),
    "takeover": (lambda c, a: c.take_over_fs(a.fs, force=a.force), True),
    "release": (lambda c, a: c.release_fs(a.fs), True),
    "giveback": (lambda c, a: c.give_back(), False),
    "backup": (lambda c, a: c.backup(cross_group=list(a.cross_group)), False),
    "backups": (lambda c, a: c.backups(), False),
    "area": (lambda c, a: c.area(), False),
    "reform": (lambda c, a: c.reform_area(), False),
}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--api", required=True, help="the blade management API URL (http://HOST:PORT)")
    parser.add_argument("--token-file", help="blade API token file (default $NASBLADE_BLADE_TOKEN)")
    parser.add_argument("action", choices=sorted(ACTIONS))
    parser.add_argument("fs", nargs="?", help="file system (takeover, release)")
    parser.add_argument("--force", action="store_true", help="takeover: fence a live owner instead of asking it")
    parser.add_argument("--cross-group", action="append", default=[], help="backup: also copy this group's portion")
    examples(parser, """\
  nasblade cluster --api http://127.0.0.1:10900 --token-file blade-token status
  nasblade cluster --api http://127.0.0.1:10900 takeover fs1 --force
""")


def _token(args: argparse.Namespace) -> str | None:
    if args.token_file:
        return Path(args.token_file).read_text().strip()
    return os.environ.get("NASBLADE_BLADE_TOKEN")


def run(args: argparse.Namespace) -> int:
    call, needs_fs = ACTIONS[args.action]
    token = _token(args)
    if not token:
        sys.stderr.write("nasblade cluster: give --token-file or $NASBLADE_BLADE_TOKEN\n")
        return 2
    if needs_fs and not args.fs:
        sys.stderr.write(f"nasblade cluster {args.action}: name the file system\n")
        return 2
    try:
        result = call(BladeClient(args.api, token, timeout=180.0), args)
    except BladeAPIError as exc:
        sys.stderr.write(f"nasblade cluster {args.action}: {exc}\n")
        return 1
    except OSError as exc:
        sys.stderr.write(f"nasblade cluster: cannot reach {args.api}: {exc}\n")
        return 1
    sys.stdout.write(json.dumps(result, indent=1, sort_keys=True) + "\n")
    return 0
