"""``software rollout VERSION``: switch the blades to another software version one by one and
show the progress per blade until every blade runs it.

On Kubernetes this sets ``spec.software.version`` of the DiskArray and the operator rolls the
blades (``ClusterGroup.status.rollout``). On a standalone array this command rolls the blades
itself through the chassis of ``nasblade up`` (``StandaloneSource.rolling_restart``,
``nasblade.standalone.rollout``: move the blade's file systems to a peer, restart it on the
version, wait until it is back, give them back, next blade). Exit 0 when every blade reports
the version, 2 for a version not in the catalog, 4 on timeout, 1 when a blade failed.
Hooked into ``nasblade software`` (``nasblade.terminal.commands.programlu``) and ``kubectl nas software``.
"""

from __future__ import annotations

import argparse
import sys
import time
from typing import Any

from rich.progress import BarColumn, Progress, TaskID, TextColumn

from nasblade.terminal import plan, render
from nasblade.terminal.commands import examples, name
from nasblade.terminal.errors import Timeout, UsageError
from nasblade.terminal.standalone import StandaloneSource
from nasblade.terminal.target import add_target_arguments, guarded, open_source


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("version", metavar="VERSION", help="software version (must be in the program catalog)")
    parser.add_argument("--array", metavar="NAME", help="DiskArray to roll (default: the only one in the namespace)")
    parser.add_argument("--force", action="store_true",
                        help="roll out even when the version is not among the ones seeded into the program LU")
    parser.add_argument("--no-follow", action="store_true", help="only request it; do not wait")
    parser.add_argument("--timeout", type=float, default=900.0, metavar="SECONDS", help="give up following after this long (exit 4); standalone: per blade")
    parser.add_argument("--interval", type=float, default=1.0, metavar="SECONDS", help="progress refresh interval")
    add_target_arguments(parser)
    examples(parser, """\
  kubectl nas software rollout 1.2.0 -n storage
  nasblade software rollout 1.2.0 --kube --array main -o json
""")


def add_parser(sub: Any) -> None:
    """Add ``rollout`` to a ``software`` subcommand's sub-parsers."""
    p = sub.add_parser("rollout", help="roll the blades to a software version, with progress per blade")
    add_arguments(p)


def run_standalone(args: argparse.Namespace, source: StandaloneSource) -> int:
    """The standalone rollout, one progress bar per blade (steps of ``nasblade.standalone.rollout``)."""
    from nasblade.standalone.rollout import STEPS

    if args.no_follow:
        raise UsageError("a standalone rollout is done by this command: drop --no-follow")
    tasks: dict[str, TaskID] = {}
    with Progress(TextColumn("{task.description:<20}"), BarColumn(), TextColumn("{task.fields[detail]}"),
                  console=render.console(sys.stderr), disable=args.output != "table") as bar:
        def progress(blade: str, done: int, detail: str) -> None:
            if blade not in tasks:
                tasks[blade] = bar.add_task(blade, total=STEPS, detail="")
            bar.update(tasks[blade], completed=done, detail=detail)

        result = source.rolling_restart(args.version, progress=progress, timeout_per_blade=args.timeout)
    if args.output == "table":
        for step in result["steps"]:
            what = "already on it" if step["skipped"] else f"{step['from'] or '-'} -> {step['to']} in {step['seconds']:g}s"
            sys.stdout.write(f"{step['blade']}: {what}\n")
        sys.stdout.write(f"every blade runs {args.version}\n")
    else:
        render.write_data(result, fmt=args.output, stream=sys.stdout)
    return 0


def run(args: argparse.Namespace) -> int:
    def body() -> int:
        source = open_source(args)
        if isinstance(source, StandaloneSource):
            return run_standalone(args, source)
        requested = source.rollout(args.version, array=args.array, force=args.force)
        if args.no_follow:
            render.write_data(requested, fmt="json" if args.output == "table" else args.output, stream=sys.stdout)
            return 0
        deadline = time.monotonic() + args.timeout
        tasks: dict[str, TaskID] = {}
        with Progress(TextColumn("{task.description:<20}"), BarColumn(), TextColumn("{task.fields[detail]}"),
                      console=render.console(sys.stderr), disable=args.output != "table") as bar:
            while True:
                snap = source.snapshot()
                blades = plan.all_blades(snap)
                for b in blades:
                    if b["name"] not in tasks:
                        tasks[b["name"]] = bar.add_task(b["name"], total=1, detail="")
                    on = b["softwareVersion"] == args.version and b["state"] == "ok"
                    bar.update(tasks[b["name"]], completed=1 if on else 0,
                               detail=f"{b['softwareVersion'] or '-'} ({b['state']})")
                if blades and all(b["softwareVersion"] == args.version and b["state"] == "ok" for b in blades):
                    break
                if time.monotonic() > deadline:
                    behind = [b["name"] for b in blades if b["softwareVersion"] != args.version]
                    raise Timeout(f"rollout to {args.version} not finished after {args.timeout:g}s: {', '.join(behind)} behind")
                time.sleep(args.interval)
        result = {"version": args.version, "blades": {b["name"]: b["softwareVersion"] for b in blades}, **requested}
        if args.output == "table":
            sys.stdout.write(f"every blade runs {args.version}\n")
        else:
            render.write_data(result, fmt=args.output, stream=sys.stdout)
        return 0

    return guarded(name(args), body)
