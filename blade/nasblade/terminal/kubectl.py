"""``kubectl nas …``: the management terminal as a kubectl plugin (installed as ``kubectl-nas``).

The same subcommand modules as ``nasblade`` (``nasblade.terminal.commands``) with Kubernetes as
the target (current kubeconfig context, ``-n NAMESPACE``, ``--context``). ``software`` offers
``rollout`` and ``list`` here; pushing bundles goes through the controller's NBD endpoint,
which is inside the cluster (``nasblade software push`` from a pod). Without the ``operator``
extra (pykube-ng) every command says so and exits 2 (``kube.KubeSource``; ``main`` for
anything else that imports it).
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence

COMMANDS: dict[str, tuple[str, str]] = {
    "status": ("nasblade.terminal.commands.status", "arrays, devices, LUs, cache/load, groups, blades, backups"),
    "volumes": ("nasblade.terminal.commands.volumes", "the CSI volumes: file-system and directory volumes, sizes, usage, snapshots"),
    "backup": ("nasblade.terminal.commands.backup", "request a backup of a cluster group and follow it"),
    "takeover": ("nasblade.terminal.commands.takeover", "move a file system to a blade (or --dry-run)"),
    "giveback": ("nasblade.terminal.commands.giveback", "give a file system back to its home blade"),
    "software": ("nasblade.terminal.commands.software", "software versions: list, rollout"),
    "map": ("nasblade.terminal.commands.map", "draw the array as SVG (and PNG)"),
    "events": ("nasblade.terminal.commands.events", "what the array did and does (-f to follow)"),
    "watch": ("nasblade.terminal.commands.watch", "live status view"),
    "completion": ("nasblade.terminal.commands.completion", "print a shell completion script (bash, zsh, fish)"),
    "version": ("nasblade.terminal.commands.version", "print the version (-o json: version, python, platform)"),
    "__complete": ("nasblade.terminal.commands.complete", "names for the completion scripts (hidden)"),
}


def build_parser() -> argparse.ArgumentParser:
    import nasblade

    parser = argparse.ArgumentParser(
        prog="kubectl nas",
        description="Management terminal for nasblade DiskArrays and ClusterGroups on Kubernetes.",
        epilog="examples:\n  kubectl nas status -n storage\n  kubectl nas backup g1 -n storage\n"
               "  kubectl nas takeover fs1 --to g1-1 --dry-run\n  kubectl nas map --svg array.svg\n",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"kubectl-nas {nasblade.__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for cmd, (path, help_text) in COMMANDS.items():
        module = importlib.import_module(path)
        description = (module.__doc__ or help_text).strip().splitlines()[0]
        if cmd.startswith("__"):  # hidden: not in --help
            p = sub.add_parser(cmd, description=description)
        else:
            p = sub.add_parser(cmd, help=help_text, description=description)
        module.add_arguments(p)
        p.set_defaults(_module=module, force_kube=True, prog_name="kubectl nas")
    return parser


EXTRA_HINT = "pip install 'nasblade[operator]'"


def main(argv: Sequence[str] | None = None) -> int:
    try:
        args = build_parser().parse_args(argv)
        result: int = args._module.run(args)
    except ModuleNotFoundError as exc:  # installed without the operator extra (pykube-ng, kubernetes)
        sys.stderr.write(f"kubectl nas: Kubernetes support is not installed (no module {exc.name!r}): "
                         f"{EXTRA_HINT}\n")
        return 2
    return result


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
