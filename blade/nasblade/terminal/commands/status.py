"""Show arrays, devices, LUs, cache and load, cluster groups, blades, file systems and backups.

Tables for people; ``-o json`` / ``-o yaml`` print the ``nasblade.terminal.model.Snapshot``
for scripts. Exit 3 when the array does not answer.
"""

from __future__ import annotations

import argparse
import sys

from nasblade.terminal import render
from nasblade.terminal.commands import examples, name
from nasblade.terminal.target import add_target_arguments, guarded, open_source


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_target_arguments(parser)
    examples(parser, """\
  nasblade status --data-dir ./nasblade-data --config array.yaml
  nasblade status -o json | jq '.groups[].blades[] | {name, state}'
  kubectl nas status -n storage -o yaml
""")


def run(args: argparse.Namespace) -> int:
    def body() -> int:
        snap = open_source(args).snapshot()
        if args.output == "table":
            render.console(sys.stdout).print(render.status_tables(snap))
        else:
            render.write_data(snap, fmt=args.output, stream=sys.stdout)
        return 0

    return guarded(name(args), body)
