"""List the CSI driver's volumes: file systems of their own and directory volumes, with snapshots.

``nasblade volumes`` shows each volume of the CSI driver (one driver name per array, docs/csi.md):
its id, mode (``filesystem``: a file system of its own on an LU, served by a cluster group;
``directory``: a directory with a tree quota in a shared file system), the file system, the
cluster group and blade serving it, its size or quota, the bytes and files used where the
blade reports them, and its snapshots (id, size, ready). Only names the driver gives are
listed. ``-o json`` / ``-o yaml`` print the ``model.VolumeList``; problems that leave the list
short (a blade that does not answer) are notes under the table and ``problems`` in JSON. Exit 3
when the array does not answer.
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
  nasblade volumes --data-dir ./nasblade-data
  nasblade volumes -o json | jq '.volumes[] | select(.mode == "directory") | {id, size, usedBytes}'
  kubectl nas volumes -n storage
""")


def run(args: argparse.Namespace) -> int:
    def body() -> int:
        source = open_source(args)
        listing = source.volumes(source.snapshot())
        if args.output == "table":
            render.console(sys.stdout).print(render.volumes_view(listing))
        else:
            render.write_data(listing, fmt=args.output, stream=sys.stdout)
        return 0

    return guarded(name(args), body)
