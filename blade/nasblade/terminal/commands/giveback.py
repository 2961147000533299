"""Give a file system back to its home blade (the one it is configured to run on), after a
failover or a planned takeover moved it away. Same checks, dry run and exit codes as
``takeover``, except that a file system already served by its home blade (and not pinned
elsewhere) is a no-op: exit 0, "home already" (``-o json``: ``alreadyHome: true``), so giving
back is idempotent and safe to script.
"""

from __future__ import annotations

import argparse
import sys

from nasblade.terminal import plan, render
from nasblade.terminal.commands import examples, name, takeover
from nasblade.terminal.model import Snapshot
from nasblade.terminal.target import guarded, open_source


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("fs", metavar="FS", help="file system to give back to its home blade")
    takeover.add_common(parser)
    examples(parser, """\
  nasblade giveback fs1 --dry-run --data-dir ./nasblade-data
  kubectl nas giveback home -n storage
""")


def already_home(snap: Snapshot, fs_name: str) -> bool:
    """``fs_name`` is served by its home blade and no planned move pins it elsewhere."""
    fs = plan.find_fs(snap, fs_name)
    home = plan.home_blade(snap, fs_name)
    served = any(b["name"] == home and fs_name in b["fileSystems"] for b in plan.all_blades(snap))
    return fs["blade"] == home and served and fs.get("pinnedTo") in (None, home)


def run(args: argparse.Namespace) -> int:
    def body() -> int:
        source = open_source(args)
        snap = source.snapshot()
        home = plan.home_blade(snap, args.fs)
        if already_home(snap, args.fs):
            fs = plan.find_fs(snap, args.fs)
            if args.output == "table":
                render.console(sys.stdout).print(f"{args.fs} is home already: served by {home} (epoch {fs['epoch']}); nothing to do")
            else:
                render.write_data({"fileSystem": args.fs, "blade": home, "epoch": fs["epoch"], "alreadyHome": True},
                                  fmt=args.output, stream=sys.stdout)
            return 0
        return takeover.move(args, source, fs=args.fs, to=home)

    return guarded(name(args), body)
