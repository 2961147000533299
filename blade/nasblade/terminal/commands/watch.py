"""A live view of the array that fits the terminal: who serves each file system and every
blade's health first (what changes), then a one-line array summary and as many of the latest
events as fit (``render.watch_view``; ``status`` for devices, LUs and backups, ``events
--follow`` for a plain stream). Ctrl-C to leave.
"""

from __future__ import annotations

import argparse
import sys
import time

from rich.console import Group
from rich.live import Live

from nasblade.terminal import plan, render
from nasblade.terminal.commands import examples, name
from nasblade.terminal.commands.events import add_follow_arguments
from nasblade.terminal.model import Event
from nasblade.terminal.target import add_target_arguments, guarded, open_source


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_follow_arguments(parser)
    parser.add_argument("--events", type=int, default=10, metavar="N", help="how many recent events to show (default 10)")
    add_target_arguments(parser, output=False)
    examples(parser, """\
  nasblade watch --data-dir ./nasblade-data
  kubectl nas watch -n storage --interval 2
""")


def run(args: argparse.Namespace) -> int:
    def body() -> int:
        source = open_source(args)
        prev = source.snapshot()
        recent: list[Event] = []
        console = render.console(sys.stdout)

        def view() -> Group:
            return render.watch_view(prev, recent[-args.events:], width=console.width, height=console.height)

        end = None if args.duration is None else time.monotonic() + args.duration
        with Live(view(), console=console, refresh_per_second=4, screen=False) as live:
            while end is None or time.monotonic() < end:
                time.sleep(args.interval)
                cur = source.snapshot()
                recent.extend(plan.diff_events(prev, cur))
                prev = cur
                live.update(view())
        return 0

    return guarded(name(args), body)
