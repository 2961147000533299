"""The ``nasblade`` command: one image, several roles.

Each subcommand lives in its own module that exposes two functions::

    def add_arguments(parser: argparse.ArgumentParser) -> None: ...
    def run(args: argparse.Namespace) -> int: ...

``COMMANDS`` maps a subcommand name to that module, a one-line help text and the section of
``--help`` that lists it (``SECTIONS``: the management terminal first, then set-up tools, then
the daemon roles an administrator does not type; ``hidden`` for ``__complete``, which the
completion scripts call). ``nasblade --version`` prints the version (``nasblade version -o
json`` for version, Python and platform).
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence
from typing import NamedTuple

from nasblade import logformat


class Command(NamedTuple):
    module: str
    help: str
    #: where ``--help`` lists it: ``SECTIONS`` key, or ``"hidden"`` (for scripts, not people)
    section: str = "terminal"


SECTIONS: dict[str, str] = {
    "terminal": "management terminal (what an administrator types)",
    "tools": "set-up and tools",
    "role": "daemon roles (run by `nasblade up`, the containers and the operator, not by hand)",
}

COMMANDS: dict[str, Command] = {
    "status": Command("nasblade.terminal.commands.status", "arrays, LUs, cache/load, groups, blades, backups"),
    "watch": Command("nasblade.terminal.commands.watch", "live status view: owners and blades' health first"),
    "devices": Command("nasblade.terminal.commands.devices", "the array's devices: protection, states, errors, rebuild; replace or fail one"),
    "scrub": Command("nasblade.terminal.commands.scrub", "verify and repair every copy of the array's data now (--wait to follow)"),
    "volumes": Command("nasblade.terminal.commands.volumes", "the CSI volumes: file-system and directory volumes, sizes, usage, snapshots"),
    "events": Command("nasblade.terminal.commands.events", "what the array did and does (-f to follow)"),
    "takeover": Command("nasblade.terminal.commands.takeover", "move a file system to a blade (or --dry-run)"),
    "giveback": Command("nasblade.terminal.commands.giveback", "give a file system back to its home blade"),
    "backup": Command("nasblade.terminal.commands.backup", "request a cluster group's backup and follow it"),
    "map": Command("nasblade.terminal.commands.map", "draw the array as SVG (and PNG)"),
    "software": Command("nasblade.terminal.commands.programlu", "list, roll out, build, push and select blade software"),
    "completion": Command("nasblade.terminal.commands.completion", "print a shell completion script (bash, zsh, fish)"),
    "version": Command("nasblade.terminal.commands.version", "print the version (-o json: version, python, platform)"),
    "up": Command("nasblade.standalone.main", "run a whole array on this machine (controller + blades)", "tools"),
    "cluster": Command("nasblade.terminal.commands.cluster", "cluster groups through one blade's API: status, check-takeover, takeover, release, giveback, backups, area", "tools"),
    "mkfs": Command("nasblade.fileproc.mkfs", "create a nasblade file system on a device", "tools"),
    "fsck": Command("nasblade.fileproc.fsck", "check a nasblade file system on a device", "tools"),
    "controller": Command("nasblade.controller.main", "the storage controller (NBD + control API)", "role"),
    "block-processor": Command("nasblade.cluster.role", "a blade's block processor (NBD to the controller, processor info, software fetch)", "role"),
    "boot": Command("nasblade.program.boot", "boot shim: run the blade software the block processor installed", "role"),
    "blade-file-processor": Command("nasblade.fileproc.agent", "a blade's file processor with heartbeats to its block processor (run by the boot shim)", "role"),
    "file-processor": Command("nasblade.fileproc.main", "serve file systems on LUs over NFSv3 (+ MOUNT, portmapper)", "role"),
    "operator": Command("nasblade_operator.main", "the kopf operator for DiskArray and ClusterGroup resources", "role"),
    "__complete": Command("nasblade.terminal.commands.complete", "names for the shell completion scripts", "hidden"),
}


def commands_help(commands: dict[str, tuple[str, str, str]] | dict[str, Command],
                  sections: dict[str, str]) -> str:
    """The ``--help`` text listing ``commands`` by section (``sections`` order; hidden left out)."""
    width = max(len(n) for n in commands) + 2
    out: list[str] = []
    for key, title in sections.items():
        rows = [(n, c[1]) for n, c in commands.items() if c[2] == key]
        if rows:
            out.append(f"{title}:")
            out += [f"  {n:<{width}}{h}" for n, h in rows]
            out.append("")
    return "\n".join(out)


def build_parser() -> argparse.ArgumentParser:
    import nasblade

    parser = argparse.ArgumentParser(
        prog="nasblade",
        description="NAS blades on a disk array: controller, blades, standalone array and tools.",
        epilog=commands_help(COMMANDS, SECTIONS) + "\n`nasblade COMMAND --help` shows a command's options and examples.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"nasblade {nasblade.__version__}")
    parser.add_argument("--log-format", choices=logformat.FORMATS, default=logformat.default(),
                        help="log lines as text or one JSON object each (default: $NASBLADE_LOG_FORMAT or text)")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True, help="one of the commands below")
    for name, command in COMMANDS.items():
        module = importlib.import_module(command.module)
        # no help= here: the commands are listed by section in the epilog, not in one mixed list
        p = sub.add_parser(name, description=(module.__doc__ or command.help).strip().splitlines()[0])
        module.add_arguments(p)
        p.set_defaults(_module=module)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    from nasblade.standalone import lifetime

    lifetime.bind_to_parent()  # a child of `nasblade up` dies with it (nasblade.standalone.lifetime)
    args = build_parser().parse_args(argv)
    logformat.configure(args.log_format, role=args.command)
    result: int = args._module.run(args)
    return result


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
