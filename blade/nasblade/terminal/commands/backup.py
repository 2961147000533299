"""Request an on-demand backup of a cluster group's processor information and follow it.

The request goes where the system takes it (a blade of the group on a standalone array, the
``nasblade.io/backup-now`` annotation on Kubernetes); progress (bytes copied, rate, controller
load) is shown until the copy ends. Exit 0 succeeded, 1 failed, 2 not available, 4 timed out.
"""

from __future__ import annotations

import argparse
import sys
import time
from typing import Any

from rich.progress import BarColumn, DownloadColumn, Progress, TextColumn, TransferSpeedColumn

from nasblade.terminal import render
from nasblade.terminal.commands import examples, name
from nasblade.terminal.errors import Timeout
from nasblade.terminal.source import BackupProgress
from nasblade.terminal.target import add_target_arguments, guarded, open_source


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("group", metavar="GROUP", help="cluster group whose portion is copied to its backup area")
    parser.add_argument("--cross-group", action="append", default=[], metavar="G2",
                        help="also copy this group's portion into its backup area (claim 9); repeatable")
    parser.add_argument("--no-follow", action="store_true", help="only request it; do not wait for the result")
    parser.add_argument("--timeout", type=float, default=600.0, metavar="SECONDS",
                        help="give up following after this long (exit 4; default 600)")
    parser.add_argument("--interval", type=float, default=0.5, metavar="SECONDS", help="progress refresh interval")
    add_target_arguments(parser)
    examples(parser, """\
  nasblade backup g1 --data-dir ./nasblade-data
  nasblade backup g1 --cross-group g2 -o json
  kubectl nas backup web-blades -n storage --timeout 300
""")


def _load_text(p: BackupProgress) -> str:
    load = p.load or {}
    if not load:
        return ""
    return f"load {load.get('iops', 0):.0f} IOPS, queue {load.get('queueDepth', 0):.1f}"


def run(args: argparse.Namespace) -> int:
    def body() -> int:
        source = open_source(args)
        request = source.request_backup(args.group, cross_groups=list(args.cross_group))
        if args.no_follow:
            if args.output == "table":
                sys.stderr.write(f"backup of {', '.join(request.groups)} requested\n")
            else:
                render.write_data({"requested": request.groups, "detail": request.detail}, fmt=args.output, stream=sys.stdout)
            return 0
        deadline = time.monotonic() + args.timeout
        err = render.console(sys.stderr)
        columns = (TextColumn("{task.description}"), BarColumn(), DownloadColumn(binary_units=True),
                   TransferSpeedColumn(), TextColumn("{task.fields[load]}"))
        with Progress(*columns, console=err, transient=False, disable=args.output != "table") as bar:
            task = bar.add_task(f"backup {'+'.join(request.groups)}", total=None, load="")
            while True:
                p = source.backup_progress(request)
                bar.update(task, completed=p.bytes_done, total=p.bytes_total or None, load=_load_text(p))
                if p.done:
                    break
                if time.monotonic() > deadline:
                    raise Timeout(f"backup of {', '.join(request.groups)} not finished after {args.timeout:g}s: {p.message}")
                time.sleep(args.interval)
        result: dict[str, Any] = {"groups": request.groups, "succeeded": p.succeeded, "message": p.message,
                  "bytesDone": p.bytes_done, "bytesTotal": p.bytes_total, "copies": p.copies}
        if args.output == "table":
            err.print(f"backup {'succeeded' if p.succeeded else 'FAILED'}: {p.message}")
        else:
            render.write_data(result, fmt=args.output, stream=sys.stdout)
        return 0 if p.succeeded else 1

    return guarded(name(args), body)
