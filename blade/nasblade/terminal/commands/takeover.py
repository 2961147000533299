"""Move a file system to another blade of its cluster group (a planned takeover), or check
with ``--dry-run`` whether that is possible now and why not.

The dry run reads the current state only (``nasblade.terminal.plan.check_takeover``): exit 0
possible, 1 not possible (each reason printed). The move itself: the owner releases the file
system, the target reserves its LU with a new epoch and serves it; the command waits until the
system reports the new owner (exit 0), or refuses the move (exit 1, with the reason), or
``--timeout`` passes (exit 4). On Kubernetes the operator does the move (a request annotation
on the ClusterGroup) and pins the file system to a blade other than its home, so automatic
give-back leaves it there; ``giveback`` moves it home and removes the pin.
"""

from __future__ import annotations

import argparse
import sys
import time
from typing import Any

from nasblade.terminal import plan, render
from nasblade.terminal.commands import examples, name
from nasblade.terminal.errors import TerminalError, Timeout
from nasblade.terminal.source import Source
from nasblade.terminal.target import add_target_arguments, guarded, open_source


def add_common(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--dry-run", action="store_true", help="only say whether the move is possible now, and why not")
    parser.add_argument("--timeout", type=float, default=120.0, metavar="SECONDS",
                        help="how long to wait for the new owner to be reported (default 120)")
    add_target_arguments(parser)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("fs", metavar="FS", help="file system to move")
    parser.add_argument("--to", required=True, metavar="BLADE", help="blade that takes the file system over")
    add_common(parser)
    examples(parser, """\
  nasblade takeover fs1 --to g1-1 --dry-run
  nasblade takeover fs1 --to g1-1 --data-dir ./nasblade-data
  kubectl nas takeover home --to web-blades-1 -n storage -o json
""")


def move(args: argparse.Namespace, source: Source, *, fs: str, to: str) -> int:
    snap = source.snapshot()
    check = plan.check_takeover(snap, fs, to=to)
    remote = source.remote_check(fs, to=to) if not check.reasons else None
    if remote is not None:  # the target blade's own verdict (its view of liveness and the LU)
        check.reasons += [r for r in remote.get("reasons", []) if r not in check.reasons]
        check.possible = not check.reasons
        if remote.get("mode"):
            check.steps.append(f"mode: {remote['mode']} (checked by {to})")
    verdict: dict[str, Any] = check.to_json()
    out = render.console(sys.stdout)
    if args.dry_run or not check.possible:
        if args.output != "table":
            render.write_data(verdict, fmt=args.output, stream=sys.stdout)
        elif check.possible:
            out.print(f"[green]possible[/]: {to} can take over {fs} now" + "".join(f"\n  {i}. {s}" for i, s in enumerate(check.steps, 1)))
        else:
            out.print(f"[red]not possible[/]: {to} cannot take over {fs} now:" + "".join(f"\n  - {r}" for r in check.reasons))
        if not check.possible and not args.dry_run:
            raise TerminalError("takeover refused: " + "; ".join(check.reasons))
        return 0 if check.possible else 1
    result = source.move(fs, to=to, snapshot=snap)
    deadline = time.monotonic() + args.timeout
    while True:
        now = source.snapshot()
        rec = plan.find_fs(now, fs)
        if rec["blade"] == to and any(b["name"] == to and fs in b["fileSystems"] for b in plan.all_blades(now)):
            break
        refused = source.move_refused(result)
        if refused is not None:
            raise TerminalError(f"takeover of {fs} by {to} refused: {refused}")
        if time.monotonic() > deadline:
            raise Timeout(f"{fs} was handed to {to} but the system still reports {rec['blade'] or 'no owner'} after {args.timeout:g}s")
        time.sleep(0.3)
    result.update({"blade": rec["blade"], "epoch": rec["epoch"]})
    if args.output == "table":
        out.print(f"{fs} is now served by {to} (epoch {rec['epoch']})")
    else:
        render.write_data(result, fmt=args.output, stream=sys.stdout)
    return 0


def run(args: argparse.Namespace) -> int:
    return guarded(name(args), lambda: move(args, open_source(args), fs=args.fs, to=args.to))
