"""``kubectl nas …``: the management terminal as a kubectl plugin (installed as ``kubectl-nas``).

The same subcommand modules as ``nasblade`` (``nasblade.terminal.commands``) with Kubernetes as
the target (current kubeconfig context, ``-n NAMESPACE``, ``--context``). ``software`` offers
``rollout`` and ``list`` here; pushing bundles goes through the controller's NBD endpoint,
which is inside the cluster (``nasblade software push`` from a pod).
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence

COMMANDS: dict[str, tuple[str, str]] = {
    "status": ("nasblade.terminal.commands.status", "arrays, devices, LUs, cache/load, groups, blades, backups"),
    "backup": ("nasblade.terminal.commands.backup", "request a backup of a cluster group and follow it"),
    "takeover": ("nasblade.terminal.commands.takeover", "move a file system to a blade (or --dry-run)"),
    "giveback": ("nasblade.terminal.commands.giveback", "give a file system back to its home blade"),
    "software": ("nasblade.terminal.commands.software", "software versions: list, rollout"),
    "map": ("nasblade.terminal.commands.map", "draw the array as SVG (and PNG)"),
    "events": ("nasblade.terminal.commands.events", "what the array did and does (-f to follow)"),
    "watch": ("nasblade.terminal.commands.watch", "live status view"),
    "completion": ("nasblade.terminal.commands.completion", "print a shell completion script"),
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="kubectl nas",
        description="Management terminal for nasblade DiskArrays and ClusterGroups on Kubernetes.",
        epilog="examples:\n  kubectl nas status -n storage\n  kubectl nas backup g1 -n storage\n"
               "  kubectl nas takeover fs1 --to g1-1 --dry-run\n  kubectl nas map --svg array.svg\n",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for cmd, (path, help_text) in COMMANDS.items():
        module = importlib.import_module(path)
        p = sub.add_parser(cmd, help=help_text, description=(module.__doc__ or help_text).strip().splitlines()[0])
        module.add_arguments(p)
        p.set_defaults(_module=module, force_kube=True, prog_name="kubectl nas")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    result: int = args._module.run(args)
    return result


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
