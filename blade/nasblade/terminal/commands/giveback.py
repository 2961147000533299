"""Give a file system back to its home blade (the one it is configured to run on), after a
failover or a planned takeover moved it away. Same checks, dry run and exit codes as
``takeover``.
"""

from __future__ import annotations

import argparse

from nasblade.terminal import plan
from nasblade.terminal.commands import examples, name, takeover
from nasblade.terminal.target import guarded, open_source


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("fs", metavar="FS", help="file system to give back to its home blade")
    takeover.add_common(parser)
    examples(parser, """\
  nasblade giveback fs1 --dry-run --data-dir ./nasblade-data
  kubectl nas giveback home -n storage
""")


def run(args: argparse.Namespace) -> int:
    def body() -> int:
        source = open_source(args)
        home = plan.home_blade(source.snapshot(), args.fs)
        return takeover.move(args, source, fs=args.fs, to=home)

    return guarded(name(args), body)
