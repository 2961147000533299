"""The ``nasblade`` command: one image, several roles.

Each subcommand lives in its own module that exposes two functions::

    def add_arguments(parser: argparse.ArgumentParser) -> None: ...
    def run(args: argparse.Namespace) -> int: ...

``COMMANDS`` maps a subcommand name to that module and a one-line help text. Modules are
imported only when their subcommand runs, so ``nasblade --help`` stays fast and a role does
not pay for the imports of the others (the operator's kopf, for instance).
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence
from typing import NamedTuple


class Command(NamedTuple):
    module: str
    help: str


COMMANDS: dict[str, Command] = {
    "file-processor": Command("nasblade.fileproc.main", "serve file systems on LUs over NFSv3 (+ MOUNT, portmapper)"),
    "mkfs": Command("nasblade.fileproc.mkfs", "create a nasblade file system on a device"),
    "fsck": Command("nasblade.fileproc.fsck", "check a nasblade file system on a device"),
    "controller": Command("nasblade.controller.main", "run the storage controller (NBD + control API)"),
    "software": Command("nasblade.program.software", "build, push, list and select blade software on the program LU"),
    "boot": Command("nasblade.program.boot", "boot shim: run the blade software the block processor installed"),
    "block-processor": Command("nasblade.blockproc.main", "run a blade's block processor (NBD to the controller, processor info, software fetch)"),
    "up": Command("nasblade.standalone.main", "run a whole array on this machine (controller + blades)"),
    "cluster": Command("nasblade.cluster.cli", "cluster groups: status, check-takeover, takeover, release, giveback, backups, area"),
    "blade-file-processor": Command("nasblade.bladeapi.agent", "a blade's file processor with heartbeats to its block processor (run by the boot shim)"),
    "operator": Command("nasblade_operator.main", "run the kopf operator for DiskArray and ClusterGroup resources"),
    "status": Command("nasblade.terminal.commands.status", "management terminal: arrays, LUs, cache/load, groups, blades, backups"),
    "backup": Command("nasblade.terminal.commands.backup", "management terminal: request a cluster group's backup and follow it"),
    "takeover": Command("nasblade.terminal.commands.takeover", "management terminal: move a file system to a blade (or --dry-run)"),
    "giveback": Command("nasblade.terminal.commands.giveback", "management terminal: give a file system back to its home blade"),
    "map": Command("nasblade.terminal.commands.map", "management terminal: draw the array as SVG (and PNG)"),
    "events": Command("nasblade.terminal.commands.events", "management terminal: what the array did and does (-f to follow)"),
    "watch": Command("nasblade.terminal.commands.watch", "management terminal: live status view"),
    "completion": Command("nasblade.terminal.commands.completion", "print a shell completion script (bash, zsh)"),
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="nasblade",
        description="NAS blades on a disk array: controller, blades, standalone array and tools.",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name, command in COMMANDS.items():
        module = importlib.import_module(command.module)
        p = sub.add_parser(name, help=command.help, description=(module.__doc__ or command.help).strip().splitlines()[0])
        module.add_arguments(p)
        p.set_defaults(_module=module)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    from nasblade.standalone import lifetime

    lifetime.bind_to_parent()  # a child of `nasblade up` dies with it (nasblade.standalone.lifetime)
    args = build_parser().parse_args(argv)
    result: int = args._module.run(args)
    return result


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
