"""Show what the array is doing and has done: failovers and takeovers, backups, rollouts,
blade state changes. ``--follow`` keeps printing new events as they happen.

On Kubernetes these are the Events of the DiskArray / ClusterGroup resources and their pods,
plus changes seen in their status; on a standalone array, the controller's copy jobs and the
ownership records, then every change between successive snapshots
(``nasblade.terminal.plan.diff_events``).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Callable

from nasblade.terminal import plan, render
from nasblade.terminal.commands import examples, name
from nasblade.terminal.model import Event
from nasblade.terminal.source import Source
from nasblade.terminal.target import add_target_arguments, guarded, open_source


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("-f", "--follow", action="store_true", help="keep printing new events")
    add_follow_arguments(parser)
    add_target_arguments(parser)
    examples(parser, """\
  nasblade events --data-dir ./nasblade-data
  nasblade events --follow -o json        # one JSON object per line
  kubectl nas events -n storage -f
""")


def add_follow_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--interval", type=float, default=1.0, metavar="SECONDS", help="how often to look (default 1)")
    parser.add_argument("--for", dest="duration", type=float, default=None, metavar="SECONDS",
                        help="stop after this long (default: until Ctrl-C)")


def follow(source: Source, *, interval: float, duration: float | None, emit: Callable[[Event], None]) -> None:
    """Poll snapshots and ``emit`` each change (and, on Kubernetes, each new Event)."""
    prev = source.snapshot()
    seen = {json.dumps(e, sort_keys=True) for e in source.events(prev)}
    end = None if duration is None else time.monotonic() + duration
    while end is None or time.monotonic() < end:
        time.sleep(interval)
        cur = source.snapshot()
        new: list[Event] = []
        for e in source.events(cur):
            key = json.dumps(e, sort_keys=True)
            if key not in seen and e["kind"] not in ("Owner", "Backup"):
                seen.add(key)
                new.append(e)
        new += plan.diff_events(prev, cur)
        for e in new:
            emit(e)
        prev = cur


def run(args: argparse.Namespace) -> int:
    def body() -> int:
        source = open_source(args)
        events = source.events(source.snapshot())
        if not args.follow:
            if args.output == "table":
                render.console(sys.stdout).print(render.events_table(events))
            else:
                render.write_data(events, fmt=args.output, stream=sys.stdout)
            return 0

        def emit(e: Event) -> None:
            line = json.dumps(e, sort_keys=True) if args.output != "table" else render.event_line(e)
            sys.stdout.write(line + "\n")
            sys.stdout.flush()

        for e in events:
            emit(e)
        follow(source, interval=args.interval, duration=args.duration, emit=emit)
        return 0

    return guarded(name(args), body)
