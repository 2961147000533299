"""``nasblade __complete KIND [TARGET OPTIONS]`` (hidden): the names the shell completion
scripts (``completion``) offer, read from the running array, one per line.

KIND is ``groups``, ``filesystems``, ``blades`` or ``versions``. The target options are the
ones the administrator typed on the line being completed (``--data-dir``, ``-n``,
``--context``, ``--kubeconfig``, ``--kube``; the environment otherwise), so completion looks
at the same array the command will. Never an error: an unreachable array, a missing target or
a timeout (``--request-timeout``, 2 s here) completes nothing, exit 0.
"""

from __future__ import annotations

import argparse
import sys

from nasblade.terminal import plan
from nasblade.terminal.commands import examples
from nasblade.terminal.errors import TerminalError
from nasblade.terminal.model import Snapshot
from nasblade.terminal.target import add_target_arguments, open_source

KINDS = ("groups", "filesystems", "blades", "versions")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("kind", choices=KINDS)
    add_target_arguments(parser, output=False)
    parser.set_defaults(request_timeout=2.0)
    examples(parser, """\
  nasblade __complete filesystems --data-dir ./nasblade-data
  kubectl-nas __complete blades -n storage
""")


def names(snap: Snapshot, kind: str) -> list[str]:
    """The names of ``kind`` in ``snap``, sorted, without duplicates."""
    if kind == "groups":
        found = [g["name"] for g in snap["groups"]]
    elif kind == "filesystems":
        found = [f["name"] for f in snap["fileSystems"]]
    elif kind == "blades":
        found = [b["name"] for b in plan.all_blades(snap)]
    else:
        found = [str(v) for a in snap["arrays"] for v in (a["software"].get("versions") or [])]
    return sorted(set(found))


def run(args: argparse.Namespace) -> int:
    try:
        snap = open_source(args).snapshot()
    except (TerminalError, OSError, ValueError):
        return 0
    for n in names(snap, args.kind):
        sys.stdout.write(n + "\n")
    return 0
